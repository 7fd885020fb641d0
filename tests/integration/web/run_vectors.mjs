// Run sealserve.js against the wire's known-answer vectors (tests/vectors/*.json).
//
//   node run_vectors.mjs <module path> <vectors folder>
//
// Prints one JSON line: {"passed": [names], "failed": [{"name", "error"}]}. A valid vector
// passes when the module reproduces its bytes and opens it; an invalid one when the module
// refuses it with the error the vector names.
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [modulePath, folder] = process.argv.slice(2);
if (!globalThis.crypto || !globalThis.crypto.subtle) {
  // Node.js 18 (Debian's nodejs) has WebCrypto but not as a global
  globalThis.crypto = (await import("node:crypto")).webcrypto;
}
const ss = await import(pathToFileURL(resolve(modulePath)).href);
const load = (name) => JSON.parse(readFileSync(join(folder, name), "utf8"));
const hex = ss.fromHex;
const passed = [];
const failed = [];

function assertEqual(got, want, what) {
  if (got !== want) throw new Error(`${what}: got ${String(got).slice(0, 80)}, want ${String(want).slice(0, 80)}`);
}

async function check(file, name, fn) {
  const label = `${file}: ${name}`;
  try {
    await fn();
    passed.push(label);
  } catch (error) {
    failed.push({ name: label, error: `${error && error.name}: ${error && error.message}` });
  }
}

async function refuses(errorName, fn) {
  try {
    await fn();
  } catch (error) {
    if (error && error.name === errorName) return;
    throw new Error(`refused with ${error && error.name} (${error && error.message}), not ${errorName}`);
  }
  throw new Error(`accepted; want ${errorName}`);
}

function typed(entries) {
  const out = new Map();
  for (const { key, type, value } of entries) {
    out.set(key, type === "s" ? value : type === "i" ? BigInt(value) : hex(value));
  }
  return out;
}

const ARRAYS = {
  float32: Float32Array, uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array,
  int16: Int16Array, int32: Int32Array, int64: BigInt64Array, bool: Uint8Array,
  float16: Uint16Array, float64: Float64Array, uint32: Uint32Array, uint64: BigUint64Array,
};

function tensors(items) {
  return new Map(
    items.map(({ name, dtype, shape, data_hex }) => {
      const raw = hex(data_hex);
      const count = shape.reduce((a, b) => a * b, 1);
      return [name, { dtype, shape, data: new ARRAYS[dtype](raw.buffer, 0, count) }];
    }),
  );
}

function sameTensors(got, wantItems) {
  const want = tensors(wantItems);
  assertEqual([...got.keys()].join("|"), [...want.keys()].join("|"), "names");
  for (const [name, t] of want) {
    const g = got.get(name);
    assertEqual(g.dtype, t.dtype, `${name} dtype`);
    assertEqual(g.shape.join(","), t.shape.join(","), `${name} shape`);
    assertEqual(ss.toHex(g.data), ss.toHex(t.data), `${name} data`);
  }
}

// canonical encoding: the client encodes (decoding is not part of the module)
const canonical = load("canonical.json");
for (const v of canonical.valid) {
  await check("canonical", v.name, () => assertEqual(ss.toHex(ss.canonicalEncode(typed(v.entries))), v.encoding_hex, "encoding"));
}

// key derivation
const keys = load("keys.json");
for (const v of keys.hkdf) {
  await check("keys", v.name, async () => {
    const context = Object.fromEntries(typed(v.context));
    const info = ss.canonicalEncode({ label: v.label, ...context });
    assertEqual(ss.toHex(info), v.info_hex, "info");
    const okm = await ss.deriveKeyBytes(hex(v.ikm_hex), { salt: v.salt_hex === null ? null : hex(v.salt_hex), label: v.label, context });
    assertEqual(ss.toHex(okm), v.okm_hex, "okm");
  });
}
for (const v of keys.request_keys) {
  await check("keys", v.name, async () => {
    const root = hex(v.root_hex);
    assertEqual(ss.toHex(await ss.deriveKeyBytes(root, { label: "sealserve/request/input" })), v.input_key_hex, "input key");
    assertEqual(ss.toHex(await ss.deriveKeyBytes(root, { label: "sealserve/request/output" })), v.output_key_hex, "output key");
    // the non-extractable subkeys of importRequestKey are those keys: they open what the raw ones seal
    const key = await ss.importRequestKey(root);
    const rawInput = await ss.importSymmetricKey(hex(v.input_key_hex));
    const context = { purpose: "check" };
    const sealed = await ss.seal(rawInput, new Uint8Array([1, 2, 3]), context);
    assertEqual(ss.toHex(await ss.unseal(key.inputKey, sealed, context)), "010203", "input subkey");
    await refuses("InvalidEnvelope", () => ss.unseal(key.outputKey, sealed, context));
  });
}

// envelopes
const envelopes = load("envelopes.json");
for (const v of envelopes.valid) {
  await check("envelopes", v.name, async () => {
    const key = await ss.importSymmetricKey(hex(v.key_hex));
    const made = await ss.forTestVectorsOnly.sealWithFixedNonce(key, hex(v.plaintext_hex), v.context, { sealedAt: v.sealed_at, nonce: hex(v.nonce_hex) });
    assertEqual(ss.toHex(made), v.envelope_hex, "envelope");
    const opened = await ss.unseal(key, hex(v.envelope_hex), v.context, { maxAgeS: 60, now: () => v.sealed_at });
    assertEqual(ss.toHex(opened), v.plaintext_hex, "plaintext");
  });
}
for (const v of envelopes.invalid) {
  await check("envelopes", v.name, async () => {
    const key = await ss.importSymmetricKey(hex(v.key_hex));
    const options = v.max_age_s === undefined ? {} : { maxAgeS: v.max_age_s, now: () => v.now };
    await refuses(v.error, () => ss.unseal(key, hex(v.envelope_hex), v.context, options));
  });
}

// the tensor container
const tensorVectors = load("tensors.json");
for (const v of tensorVectors.valid) {
  await check("tensors", v.name, () => {
    assertEqual(ss.toHex(ss.encodeTensors(tensors(v.tensors))), v.encoding_hex, "encoding");
    sameTensors(ss.decodeTensors(hex(v.encoding_hex)), v.tensors);
  });
}
for (const v of tensorVectors.invalid) {
  await check("tensors", v.name, () => refuses(v.error, () => ss.decodeTensors(hex(v.encoding_hex))));
}

// whole inferences
const inference = load("inference.json");
for (const v of inference.valid) {
  await check("inference", v.name, async () => {
    const ids = { modelId: v.model_id, userId: v.user_id, requestId: v.request_id };
    const key = await ss.importRequestKey(hex(v.request_key_hex));
    assertEqual(JSON.stringify(ss.inputContext(ids)), JSON.stringify(v.input.context), "input context");
    assertEqual(JSON.stringify(ss.outputContext(ids)), JSON.stringify(v.output.context), "output context");
    const plain = ss.encodeTensors(tensors(v.input.tensors));
    assertEqual(ss.toHex(plain), v.input.plaintext_hex, "input plaintext");
    const sealed = await ss.forTestVectorsOnly.sealWithFixedNonce(key.inputKey, plain, ss.inputContext(ids), { sealedAt: v.sealed_at, nonce: hex(v.input.nonce_hex) });
    assertEqual(ss.toHex(sealed), v.input.envelope_hex, "sealed input");
    const outPlain = ss.encodeTensors(tensors(v.output.tensors));
    const outSealed = await ss.forTestVectorsOnly.sealWithFixedNonce(key.outputKey, outPlain, ss.outputContext(ids), { sealedAt: v.sealed_at, nonce: hex(v.output.nonce_hex) });
    assertEqual(ss.toHex(outSealed), v.output.envelope_hex, "sealed output");
    sameTensors(await ss.unsealOutput(key, hex(v.output.envelope_hex), ids), v.output.tensors);
    sameTensors(ss.decodeTensors(await ss.unseal(key.inputKey, hex(v.input.envelope_hex), ss.inputContext(ids))), v.input.tensors);
    // what sealInput makes (a fresh nonce) opens as the runtime would open it
    const fresh = await ss.sealInput(key, tensors(v.input.tensors), ids);
    assertEqual(ss.toHex(await ss.unseal(key.inputKey, fresh, ss.inputContext(ids))), v.input.plaintext_hex, "fresh input");
  });
}
for (const v of inference.invalid) {
  await check("inference", v.name, async () => {
    const key = await ss.importRequestKey(hex(v.request_key_hex));
    const ids = { modelId: v.model_id, userId: v.user_id, requestId: v.request_id };
    await refuses(v.error, () => ss.unsealOutput(key, hex(v.envelope_hex), ids));
  });
}

// signed requests
const signed = load("signed_requests.json");
for (const v of signed.valid) {
  await check("signed_requests", v.name, async () => {
    const signingKey = await ss.importEd25519Seed(hex(v.seed_hex));
    assertEqual(await ss.principalId(hex(v.public_key_hex)), v.principal_id, "principal id");
    const message = await ss.signedRequestMessage({ principal: v.principal_id, method: v.method, path: v.path, body: hex(v.body_hex), timestamp: v.timestamp, nonce: v.nonce });
    assertEqual(ss.toHex(message), v.message_hex, "message");
    const headers = await ss.forTestVectorsOnly.signRequestWithFixedNonce(signingKey, hex(v.public_key_hex), { method: v.method, path: v.path, body: hex(v.body_hex), timestamp: v.timestamp, nonce: v.nonce });
    assertEqual(JSON.stringify(headers), JSON.stringify(v.headers), "headers");
    await ss.verifyRequest(hex(v.public_key_hex), { method: v.method, path: v.path, body: hex(v.body_hex), headers: v.headers, now: () => v.timestamp });
  });
}
for (const v of signed.invalid) {
  await check("signed_requests", v.name, () =>
    refuses(v.error, () => ss.verifyRequest(hex(v.public_key_hex), { method: v.method, path: v.path, body: hex(v.body_hex), headers: v.headers, now: () => v.now, windowS: v.replay_window_s })),
  );
}

process.stdout.write(JSON.stringify({ passed, failed }) + "\n");
