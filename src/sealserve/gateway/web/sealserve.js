// sealserve.js: a sealserve client for browsers and Node.js, on WebCrypto only.
//
// It seals a user's input tensors under the request key's input subkey, sends them to the
// gateway, and opens the sealed answer under the output subkey, exactly as the Python SDK
// does (docs/protocol.md; both pass tests/vectors/*.json). No framework, no bundler, no
// dependency: an ES module that needs `globalThis.crypto.subtle`, `fetch`, TextEncoder and
// TextDecoder (every current browser in a secure context; Node.js 20).
//
//   import { importRequestKey, infer } from "./sealserve.js";
//   const key = await importRequestKey(rootBytes);            // 32 bytes, kept non-extractable
//   const answer = await infer({ gatewayUrl, modelId, userId, requestKey: key,
//                                inputs: [["input", { dtype: "float32", shape, data }]] });
//   answer.outputs.get("logits").data;                        // a Float32Array
//
// Every failed opening throws the same InvalidEnvelope; a malformed tensor container throws
// TensorFormatError; a gateway error throws GatewayError with its code and retryable flag.

const subtle = globalThis.crypto && globalThis.crypto.subtle;
const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export const INPUT_PURPOSE = "sealserve/inference/input";
export const OUTPUT_PURPOSE = "sealserve/inference/output";
export const ENVELOPE_OVERHEAD = 38;
export const MAX_PLAINTEXT_BYTES = 2 ** 30;
/** The limits of the tensor container, as the Python decoder's defaults. */
export const TENSOR_LIMITS = Object.freeze({
  maxTensors: 256,
  maxNameBytes: 256,
  maxRank: 8,
  maxElements: 2 ** 31,
  maxTotalBytes: 2 ** 31,
});

const ENVELOPE_VERSION = 1;
const SUITE_AES256GCM = 1;
const HEADER_BYTES = 10;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const CLOCK_SKEW_S = 60;
const MAX_CONTEXT_ENTRIES = 256;
const MAX_KEY_BYTES = 1024;
const AAD_LABEL = encoder.encode("sealserve/envelope\0");
const SSTN_MAGIC = [0x53, 0x53, 0x54, 0x4e]; // "SSTN"
const SSTN_ALIGN = 64;
const REQUEST_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const PRINCIPAL_ID = /^[0-9a-f]{64}$/;
const MODEL_ID = /^[0-9a-f]{64}\/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

// ---- errors -----------------------------------------------------------------------------------

/** Every envelope that does not open: wrong key, ids or purpose, tampered, too old. */
export class InvalidEnvelope extends Error {
  constructor() {
    super("invalid envelope");
    this.name = "InvalidEnvelope";
  }
}

/** A tensor container that is malformed or over a limit. */
export class TensorFormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "TensorFormatError";
  }
}

/** A signed request that does not verify (used by verifyRequest). */
export class InvalidSignature extends Error {
  constructor() {
    super("invalid signature");
    this.name = "InvalidSignature";
  }
}

/** An error answer of the gateway: `{"error": {"code", "message", "retryable"}}`. */
export class GatewayError extends Error {
  constructor(status, code, message, retryable) {
    super(`${code}: ${message}`);
    this.name = "GatewayError";
    this.status = status;
    this.code = code;
    this.retryable = retryable;
  }
}

function requireSubtle() {
  if (!subtle) {
    throw new Error(
      "WebCrypto is not available: open the page over https:// or from localhost " +
        "(a secure context), or use Node.js 20 or later",
    );
  }
  return subtle;
}

// ---- bytes ------------------------------------------------------------------------------------

/** Lowercase hex of bytes. */
export function toHex(bytes) {
  let out = "";
  for (const b of asBytes(bytes, "bytes")) out += b.toString(16).padStart(2, "0");
  return out;
}

/** Bytes of a hex string (either case). */
export function fromHex(text) {
  if (typeof text !== "string" || text.length % 2 || /[^0-9a-fA-F]/.test(text)) {
    throw new TypeError("not a hex string");
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** base64url of bytes; padded unless `pad` is false. */
export function toBase64Url(bytes, { pad = true } = {}) {
  let binary = "";
  for (const b of asBytes(bytes, "bytes")) binary += String.fromCharCode(b);
  const text = btoa(binary).replace(/\+/g, "-").replace(/\//g, "_");
  return pad ? text : text.replace(/=+$/, "");
}

/** Bytes of base64url text, padded or not; TypeError for anything else. */
export function fromBase64Url(text) {
  if (typeof text !== "string") throw new TypeError("not base64url");
  const bare = text.replace(/=+$/, "");
  if (/[^A-Za-z0-9_-]/.test(bare) || bare.length % 4 === 1) throw new TypeError("not base64url");
  const std = bare.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(std + "=".repeat((4 - (std.length % 4)) % 4));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function asBytes(value, name) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`${name} must be a Uint8Array, an ArrayBuffer or a typed array`);
}

function concat(parts) {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function encodeText(text, what) {
  if (typeof text !== "string") throw new TypeError(`${what} must be a string`);
  const wellFormed =
    typeof text.isWellFormed === "function"
      ? text.isWellFormed()
      : !/[\uD800-\uDFFF]/.test(text.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ""));
  if (!wellFormed) {
    throw new TypeError(`${what} is not valid Unicode text`);
  }
  return encoder.encode(text);
}

// ---- canonical encoding -----------------------------------------------------------------------

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/**
 * The canonical encoding of a mapping (docs/protocol.md, "Canonical encoding").
 * `mapping` is an object or a Map of key to value: a string ('s'), a bigint or a safe
 * integer number ('i', signed 64-bit), or bytes ('b').
 */
export function canonicalEncode(mapping) {
  const entries = mapping instanceof Map ? [...mapping.entries()] : Object.entries(mapping);
  if (entries.length > 65536) throw new RangeError("a canonical mapping has at most 65536 entries");
  const encoded = entries.map(([key, value]) => {
    const keyBytes = encodeText(key, "a canonical key");
    if (keyBytes.length < 1 || keyBytes.length > MAX_KEY_BYTES) {
      throw new RangeError(`canonical key ${JSON.stringify(key)} must be 1 to ${MAX_KEY_BYTES} UTF-8 bytes`);
    }
    let tag;
    let raw;
    if (typeof value === "string") {
      tag = 0x73;
      raw = encodeText(value, `canonical value of ${JSON.stringify(key)}`);
    } else if (typeof value === "bigint" || typeof value === "number") {
      if (typeof value === "number" && !Number.isSafeInteger(value)) {
        throw new TypeError(`canonical value of ${JSON.stringify(key)} must be an integer`);
      }
      const big = BigInt(value);
      if (big < INT64_MIN || big > INT64_MAX) throw new RangeError("canonical integer outside signed 64 bits");
      tag = 0x69;
      raw = new Uint8Array(8);
      new DataView(raw.buffer).setBigInt64(0, big, false);
    } else if (value instanceof Uint8Array || value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
      tag = 0x62;
      raw = asBytes(value, "value");
    } else {
      throw new TypeError(`canonical value of ${JSON.stringify(key)} must be a string, an integer or bytes`);
    }
    return { keyBytes, tag, raw };
  });
  encoded.sort((a, b) => compareBytes(a.keyBytes, b.keyBytes)); // UTF-8 byte order
  for (let i = 1; i < encoded.length; i++) {
    if (compareBytes(encoded[i - 1].keyBytes, encoded[i].keyBytes) === 0) {
      throw new TypeError("canonical keys must be unique");
    }
  }
  const parts = [u32be(encoded.length)];
  for (const { keyBytes, tag, raw } of encoded) {
    const head = new Uint8Array(2 + keyBytes.length + 1 + 4);
    const view = new DataView(head.buffer);
    view.setUint16(0, keyBytes.length, false);
    head.set(keyBytes, 2);
    head[2 + keyBytes.length] = tag;
    view.setUint32(3 + keyBytes.length, raw.length, false);
    parts.push(head, raw);
  }
  return concat(parts);
}

function u32be(n) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n, false);
  return out;
}

// ---- keys -------------------------------------------------------------------------------------

const HKDF_EMPTY_SALT = new Uint8Array(0);

function hkdfParams(salt, info) {
  return { name: "HKDF", hash: "SHA-256", salt: salt ? asBytes(salt, "salt") : HKDF_EMPTY_SALT, info };
}

/**
 * HKDF-SHA256 of `ikm` to 32 bytes with info = canonical({label, ...context})
 * (docs/protocol.md, "Key derivation"); the raw bytes, for the test vectors and for keys a
 * caller must export. Sealing uses importRequestKey, whose subkeys stay non-extractable.
 */
export async function deriveKeyBytes(ikm, { salt = null, label, context = {} }) {
  if (!label) throw new TypeError("label must not be empty");
  if (Object.prototype.hasOwnProperty.call(context, "label")) throw new TypeError("context must not name 'label'");
  const info = canonicalEncode({ label, ...context });
  const base = await requireSubtle().importKey("raw", asBytes(ikm, "ikm"), "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits(hkdfParams(salt, info), base, 256));
}

const INPUT_INFO = canonicalEncode({ label: "sealserve/request/input" });
const OUTPUT_INFO = canonicalEncode({ label: "sealserve/request/output" });

/**
 * A request key from its 32-byte root: `{ inputKey, outputKey }`, two non-extractable AES-GCM
 * CryptoKeys (the root itself is imported for HKDF only and never kept).
 */
export async function importRequestKey(root) {
  const raw = asBytes(root, "root");
  if (raw.length !== 32) throw new RangeError(`a request key is 32 bytes, got ${raw.length}`);
  const s = requireSubtle();
  const base = await s.importKey("raw", raw, "HKDF", false, ["deriveKey"]);
  const aes = { name: "AES-GCM", length: 256 };
  const uses = ["encrypt", "decrypt"];
  const [inputKey, outputKey] = await Promise.all([
    s.deriveKey(hkdfParams(null, INPUT_INFO), base, aes, false, uses),
    s.deriveKey(hkdfParams(null, OUTPUT_INFO), base, aes, false, uses),
  ]);
  return Object.freeze({ inputKey, outputKey });
}

/** An AES-256-GCM CryptoKey from 32 raw bytes (for envelopes outside an inference). */
export async function importSymmetricKey(raw) {
  const bytes = asBytes(raw, "raw");
  if (bytes.length !== 32) throw new RangeError(`a symmetric key is 32 bytes, got ${bytes.length}`);
  return requireSubtle().importKey("raw", bytes, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
}

// ---- envelopes --------------------------------------------------------------------------------

function encodeContext(context) {
  const entries = Object.entries(context);
  if (typeof context.purpose !== "string" || !context.purpose) {
    throw new TypeError("context must name a non-empty 'purpose'");
  }
  if (entries.length > MAX_CONTEXT_ENTRIES) throw new RangeError(`a context has at most ${MAX_CONTEXT_ENTRIES} entries`);
  for (const [name, value] of entries) {
    if (typeof value !== "string") throw new TypeError(`context[${JSON.stringify(name)}] must be a string`);
  }
  return canonicalEncode(context);
}

function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

async function sealParts(key, plaintext, context, sealedAt, nonce) {
  const data = asBytes(plaintext, "plaintext");
  if (data.length > MAX_PLAINTEXT_BYTES) throw new RangeError(`plaintext is over ${MAX_PLAINTEXT_BYTES} bytes`);
  if (!Number.isSafeInteger(sealedAt) || sealedAt < 0) throw new RangeError("sealedAt must be an integer >= 0");
  const aadTail = encodeContext(context);
  const header = new Uint8Array(HEADER_BYTES);
  header[0] = ENVELOPE_VERSION;
  header[1] = SUITE_AES256GCM;
  new DataView(header.buffer).setBigUint64(2, BigInt(sealedAt), false);
  const aad = concat([AAD_LABEL, header, aadTail]);
  const sealed = await requireSubtle().encrypt({ name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 }, key, data);
  const out = new Uint8Array(HEADER_BYTES + NONCE_BYTES + sealed.byteLength);
  out.set(header, 0);
  out.set(nonce, HEADER_BYTES);
  out.set(new Uint8Array(sealed), HEADER_BYTES + NONCE_BYTES);
  return out;
}

/**
 * Seal `plaintext` under `key` (an AES-GCM CryptoKey), binding `context` (an object of strings
 * that names a `purpose`): docs/protocol.md, "Envelope". The nonce is 12 fresh random bytes.
 */
export async function seal(key, plaintext, context, { now = nowSeconds } = {}) {
  const nonce = globalThis.crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  return sealParts(key, plaintext, context, Math.floor(now()), nonce);
}

/**
 * The plaintext of `envelope` if it was sealed under `key` with this `context`; with
 * `maxAgeS`, an envelope sealed longer ago than that (or more than 60 s ahead) is refused too.
 * Every failure throws the same InvalidEnvelope.
 */
export async function unseal(key, envelope, context, { maxAgeS = null, now = nowSeconds } = {}) {
  const aadTail = encodeContext(context);
  const data = asBytes(envelope, "envelope");
  if (
    data.length < ENVELOPE_OVERHEAD ||
    data.length > MAX_PLAINTEXT_BYTES + ENVELOPE_OVERHEAD ||
    data[0] !== ENVELOPE_VERSION ||
    data[1] !== SUITE_AES256GCM
  ) {
    throw new InvalidEnvelope();
  }
  const header = data.subarray(0, HEADER_BYTES);
  const nonce = data.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES);
  const body = data.subarray(HEADER_BYTES + NONCE_BYTES);
  let plaintext;
  try {
    plaintext = await requireSubtle().decrypt(
      { name: "AES-GCM", iv: nonce, additionalData: concat([AAD_LABEL, header, aadTail]), tagLength: 128 },
      key,
      body,
    );
  } catch {
    throw new InvalidEnvelope();
  }
  if (maxAgeS !== null) {
    if (!(maxAgeS > 0)) throw new RangeError("maxAgeS must be > 0");
    const sealedAt = Number(new DataView(header.buffer, header.byteOffset, HEADER_BYTES).getBigUint64(2, false));
    const t = now();
    if (!(t - maxAgeS <= sealedAt && sealedAt <= t + CLOCK_SKEW_S)) {
      new Uint8Array(plaintext).fill(0);
      throw new InvalidEnvelope();
    }
  }
  return new Uint8Array(plaintext);
}

// ---- inference envelopes ----------------------------------------------------------------------

function checkIds({ modelId, userId, requestId }) {
  if (typeof modelId !== "string" || !MODEL_ID.test(modelId)) {
    throw new TypeError(`modelId must be '<owner_id>/<name>', got ${JSON.stringify(modelId)}`);
  }
  if (typeof userId !== "string" || !PRINCIPAL_ID.test(userId)) {
    throw new TypeError(`userId must be 64 lowercase hex digits, got ${JSON.stringify(userId)}`);
  }
  if (typeof requestId !== "string" || !REQUEST_ID.test(requestId)) {
    throw new TypeError(
      `requestId must be 1 to 128 of [A-Za-z0-9._:-] starting with a letter or digit, got ${JSON.stringify(requestId)}`,
    );
  }
}

/** The context bound into the sealed input of one request. */
export function inputContext(ids) {
  checkIds(ids);
  return { purpose: INPUT_PURPOSE, model_id: ids.modelId, user_id: ids.userId, request_id: ids.requestId };
}

/** The context bound into the sealed output of one request. */
export function outputContext(ids) {
  checkIds(ids);
  return { purpose: OUTPUT_PURPOSE, model_id: ids.modelId, user_id: ids.userId, request_id: ids.requestId };
}

/** A fresh request id: 32 random hex digits. */
export function newRequestId() {
  return toHex(globalThis.crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * The sealed input of one request: `inputs` (tensors, see encodeTensors, or their SSTN bytes)
 * under the request key's input subkey, bound to the model, the user and the request id.
 */
export async function sealInput(requestKey, inputs, ids, options = {}) {
  const plaintext = inputs instanceof Uint8Array ? inputs : encodeTensors(inputs);
  return seal(requestKey.inputKey, plaintext, inputContext(ids), options);
}

/** The output tensors (a Map) of one request, if `envelope` is the answer to exactly it. */
export async function unsealOutput(requestKey, envelope, ids) {
  return decodeTensors(await unseal(requestKey.outputKey, envelope, outputContext(ids)));
}

// ---- the tensor container (SSTN) --------------------------------------------------------------

const DTYPES = [
  // [name, ONNX code, bytes per element, typed array]
  ["float32", 1, 4, Float32Array],
  ["uint8", 2, 1, Uint8Array],
  ["int8", 3, 1, Int8Array],
  ["uint16", 4, 2, Uint16Array],
  ["int16", 5, 2, Int16Array],
  ["int32", 6, 4, Int32Array],
  ["int64", 7, 8, BigInt64Array],
  ["bool", 9, 1, Uint8Array],
  ["float16", 10, 2, Uint16Array],
  ["float64", 11, 8, Float64Array],
  ["uint32", 12, 4, Uint32Array],
  ["uint64", 13, 8, BigUint64Array],
].map(([name, code, size, array]) => ({ name, code, size, array }));
const BY_NAME = new Map(DTYPES.map((d) => [d.name, d]));
const BY_CODE = new Map(DTYPES.map((d) => [d.code, d]));
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function align(offset) {
  return Math.ceil(offset / SSTN_ALIGN) * SSTN_ALIGN;
}

function checkName(name) {
  if (!name) throw new TensorFormatError("tensor name is empty");
  for (const ch of name) {
    const cp = ch.codePointAt(0);
    if (cp < 0x20 || cp === 0x7f) throw new TensorFormatError(`tensor name ${JSON.stringify(name)} contains a control character`);
  }
  let raw;
  try {
    raw = encodeText(name, "tensor name");
  } catch {
    throw new TensorFormatError(`tensor name ${JSON.stringify(name)} is not valid Unicode`);
  }
  if (raw.length > TENSOR_LIMITS.maxNameBytes) {
    throw new TensorFormatError(`tensor name is ${raw.length} bytes, over the limit of ${TENSOR_LIMITS.maxNameBytes}`);
  }
  return raw;
}

function checkShape(name, shape) {
  if (shape.length > TENSOR_LIMITS.maxRank) {
    throw new TensorFormatError(`tensor ${JSON.stringify(name)} has rank ${shape.length}, over the limit of ${TENSOR_LIMITS.maxRank}`);
  }
  let count = 1;
  for (const dim of shape) {
    if (dim > TENSOR_LIMITS.maxElements) throw new TensorFormatError(`tensor ${JSON.stringify(name)} has dimension ${dim}, over the element limit`);
    count *= dim;
  }
  if (count > TENSOR_LIMITS.maxElements) throw new TensorFormatError(`tensor ${JSON.stringify(name)} has ${count} elements, over the limit`);
  return count;
}

function tensorEntries(tensors) {
  if (tensors instanceof Map) return [...tensors.entries()];
  if (Array.isArray(tensors)) return tensors;
  if (tensors && typeof tensors === "object") return Object.entries(tensors);
  throw new TypeError("tensors must be a Map, an array of [name, tensor] or an object");
}

/**
 * Encode named tensors into one SSTN buffer (docs/protocol.md, "Tensor container"), in the
 * order given. `tensors` is a Map, an array of [name, tensor] pairs, or an object (whose
 * integer-like keys JavaScript would reorder: prefer a Map). A tensor is
 * `{ dtype, shape, data }`: dtype a numpy name (float32, int64, bool, ...), shape an array of
 * integers, data a typed array of that dtype (bool: a Uint8Array of 0 and 1; float16: a
 * Uint16Array of the half-precision bits) or an array of numbers or bigints.
 */
export function encodeTensors(tensors) {
  if (!LITTLE_ENDIAN) throw new TensorFormatError("this platform is big-endian; SSTN data is little-endian");
  const entries = tensorEntries(tensors);
  if (entries.length > TENSOR_LIMITS.maxTensors) throw new TensorFormatError(`${entries.length} tensors is over the limit of ${TENSOR_LIMITS.maxTensors}`);
  const seen = new Set();
  const planned = [];
  let end = 8;
  for (const [name, tensor] of entries) {
    if (typeof name !== "string") throw new TypeError("tensor names must be strings");
    if (seen.has(name)) throw new TensorFormatError(`tensor name ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    const rawName = checkName(name);
    const dtype = BY_NAME.get(tensor && tensor.dtype);
    if (!dtype) throw new TensorFormatError(`tensor ${JSON.stringify(name)} has dtype ${tensor && tensor.dtype}, which the format does not carry`);
    const shape = Array.from(tensor.shape || [], (d) => {
      if (!Number.isSafeInteger(d) || d < 0) throw new TensorFormatError(`tensor ${JSON.stringify(name)} has a bad dimension ${d}`);
      return d;
    });
    const count = checkShape(name, shape);
    let data = tensor.data;
    if (!(data instanceof dtype.array)) {
      data = dtype.array.from(data, dtype.array === BigInt64Array || dtype.array === BigUint64Array ? (v) => BigInt(v) : (v) => Number(v));
    }
    if (data.length !== count) throw new TensorFormatError(`tensor ${JSON.stringify(name)} has ${data.length} elements; its shape says ${count}`);
    if (dtype.name === "bool" && data.some((v) => v !== 0 && v !== 1)) throw new TensorFormatError(`bool tensor ${JSON.stringify(name)} holds a value other than 0 or 1`);
    planned.push({ rawName, dtype, shape, data });
    end += 4 + 8 * shape.length + rawName.length;
  }
  const offsets = [];
  for (const t of planned) {
    const start = align(end);
    offsets.push(start);
    end = start + t.data.byteLength;
  }
  if (end > TENSOR_LIMITS.maxTotalBytes) throw new TensorFormatError(`the encoding would be ${end} bytes, over the limit`);
  const out = new Uint8Array(end); // zero-filled: the padding
  const view = new DataView(out.buffer);
  out.set(SSTN_MAGIC, 0);
  out[4] = 1;
  out[5] = 0;
  view.setUint16(6, planned.length, true);
  let pos = 8;
  for (const t of planned) {
    view.setUint16(pos, t.rawName.length, true);
    out[pos + 2] = t.dtype.code;
    out[pos + 3] = t.shape.length;
    pos += 4;
    for (const dim of t.shape) {
      view.setBigUint64(pos, BigInt(dim), true);
      pos += 8;
    }
    out.set(t.rawName, pos);
    pos += t.rawName.length;
  }
  planned.forEach((t, i) => out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), offsets[i]));
  return out;
}

/**
 * Decode an SSTN buffer into a Map of name to `{ dtype, shape, data }`, in order. Anything
 * that is not exactly a canonical encoding within TENSOR_LIMITS throws TensorFormatError.
 */
export function decodeTensors(buffer) {
  if (!LITTLE_ENDIAN) throw new TensorFormatError("this platform is big-endian; SSTN data is little-endian");
  const data = asBytes(buffer, "buffer");
  const total = data.length;
  if (total > TENSOR_LIMITS.maxTotalBytes) throw new TensorFormatError(`buffer is ${total} bytes, over the limit`);
  if (total < 8) throw new TensorFormatError(`buffer is ${total} bytes, shorter than the header`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (SSTN_MAGIC.some((b, i) => data[i] !== b)) throw new TensorFormatError("buffer does not start with the tensor container magic");
  if (data[4] !== 1) throw new TensorFormatError(`tensor container version ${data[4]} is not supported (this reads 1)`);
  if (data[5] !== 0) throw new TensorFormatError(`reserved header byte is ${data[5]}, must be 0`);
  const count = view.getUint16(6, true);
  if (count > TENSOR_LIMITS.maxTensors) throw new TensorFormatError(`${count} tensors is over the limit of ${TENSOR_LIMITS.maxTensors}`);
  let pos = 8;
  const described = [];
  const seen = new Set();
  for (let index = 0; index < count; index++) {
    if (pos + 4 > total) throw new TensorFormatError(`descriptor ${index} is cut off at byte ${pos}`);
    const nameLen = view.getUint16(pos, true);
    const dtype = BY_CODE.get(data[pos + 2]);
    const rank = data[pos + 3];
    if (!dtype) throw new TensorFormatError(`descriptor ${index} has unknown dtype code ${data[pos + 2]}`);
    if (rank > TENSOR_LIMITS.maxRank) throw new TensorFormatError(`descriptor ${index} has rank ${rank}, over the limit of ${TENSOR_LIMITS.maxRank}`);
    if (nameLen === 0 || nameLen > TENSOR_LIMITS.maxNameBytes) throw new TensorFormatError(`descriptor ${index} has a name of ${nameLen} bytes`);
    pos += 4;
    if (pos + 8 * rank + nameLen > total) throw new TensorFormatError(`descriptor ${index} is cut off at byte ${pos}`);
    const shape = [];
    for (let d = 0; d < rank; d++) {
      const dim = view.getBigUint64(pos, true);
      if (dim > BigInt(TENSOR_LIMITS.maxElements)) throw new TensorFormatError(`descriptor ${index} has dimension ${dim}, over the element limit`);
      shape.push(Number(dim));
      pos += 8;
    }
    let name;
    try {
      name = strictDecoder.decode(data.subarray(pos, pos + nameLen));
    } catch {
      throw new TensorFormatError(`descriptor ${index} has a name that is not utf-8`);
    }
    pos += nameLen;
    checkName(name);
    if (seen.has(name)) throw new TensorFormatError(`tensor name ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    described.push({ name, dtype, shape, count: checkShape(name, shape) });
  }
  const out = new Map();
  for (const { name, dtype, shape, count: elements } of described) {
    const start = align(pos);
    const nbytes = elements * dtype.size;
    if (start + nbytes > total) throw new TensorFormatError(`tensor ${JSON.stringify(name)} needs ${nbytes} bytes at offset ${start}; the buffer has ${total}`);
    for (let i = pos; i < start; i++) {
      if (data[i] !== 0) throw new TensorFormatError(`padding before tensor ${JSON.stringify(name)} is not zero`);
    }
    const raw = data.slice(start, start + nbytes); // a copy: aligned, owned by the caller
    if (dtype.name === "bool" && raw.some((b) => b > 1)) throw new TensorFormatError(`bool tensor ${JSON.stringify(name)} holds a byte other than 0 or 1`);
    out.set(name, { dtype: dtype.name, shape, data: new dtype.array(raw.buffer, 0, elements) });
    pos = start + nbytes;
  }
  if (pos !== total) throw new TensorFormatError(`${total - pos} unexpected bytes after the last tensor`);
  return out;
}

// ---- the gateway ------------------------------------------------------------------------------

/**
 * Run one inference through the gateway: seal `inputs`, POST them to
 * `{gatewayUrl}/v1/models/{modelId}:infer`, and open the answer.
 *
 * Returns `{ outputs, requestId, sealedInput, sealedOutput, status, headers }`: the output
 * tensors (a Map) and, for showing what crossed the wire, the exact request and answer bodies.
 * A gateway error throws GatewayError; an answer that does not open throws InvalidEnvelope.
 */
export async function infer({ gatewayUrl = "", modelId, userId, requestKey, inputs, requestId = newRequestId(), timeoutMs = null, fetch: fetchFn = globalThis.fetch }) {
  const ids = { modelId, userId, requestId };
  const sealedInput = await sealInput(requestKey, inputs, ids);
  const headers = {
    "content-type": "application/octet-stream",
    "x-sealserve-user": userId,
    "x-sealserve-request-id": requestId,
  };
  if (timeoutMs !== null) headers["x-sealserve-timeout-ms"] = String(Math.round(timeoutMs));
  const base = gatewayUrl.replace(/\/+$/, "");
  const response = await fetchFn(`${base}/v1/models/${modelId}:infer`, {
    method: "POST",
    headers,
    body: sealedInput,
    cache: "no-store",
    credentials: "omit",
  });
  const body = new Uint8Array(await response.arrayBuffer());
  if (response.status !== 200) {
    let code = "http_error";
    let message = `HTTP ${response.status}`;
    let retryable = response.status === 429 || response.status === 503;
    try {
      const error = JSON.parse(new TextDecoder().decode(body)).error;
      if (error && typeof error === "object") {
        code = String(error.code);
        message = String(error.message);
        retryable = Boolean(error.retryable);
      }
    } catch {
      // not the gateway's JSON: keep the status
    }
    throw new GatewayError(response.status, code, message, retryable);
  }
  const outputs = await unsealOutput(requestKey, body, ids);
  return { outputs, requestId, sealedInput, sealedOutput: body, status: response.status, headers: response.headers };
}

/**
 * A user's web credentials, as `sealserve user web-credentials` writes them:
 * `{"kind": "sealserve-web-credentials", "version": 1, "user_id", "model_id",
 *   "request_key"}` (request_key: base64url of the 32-byte root). Returns
 * `{ userId, modelId, requestKey }` with the key imported (non-extractable).
 */
export async function loadWebCredentials(text) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new TypeError("the credentials file is not JSON");
  }
  if (!doc || doc.kind !== "sealserve-web-credentials" || doc.version !== 1) {
    throw new TypeError("not a sealserve web credentials file (kind sealserve-web-credentials, version 1)");
  }
  const root = fromBase64Url(doc.request_key);
  try {
    checkIds({ modelId: doc.model_id, userId: doc.user_id, requestId: "check" });
    return { userId: doc.user_id, modelId: doc.model_id, requestKey: await importRequestKey(root) };
  } finally {
    root.fill(0);
  }
}

// ---- signed requests (Ed25519: browsers since 2025, Node.js 20) -------------------------------

const PKCS8_ED25519_PREFIX = fromHex("302e020100300506032b657004220420");

/** An Ed25519 signing key (CryptoKey) from its 32-byte RFC 8032 seed. */
export async function importEd25519Seed(seed) {
  const raw = asBytes(seed, "seed");
  if (raw.length !== 32) throw new RangeError("an Ed25519 seed is 32 bytes");
  return requireSubtle().importKey("pkcs8", concat([PKCS8_ED25519_PREFIX, raw]), { name: "Ed25519" }, false, ["sign"]);
}

/** The principal id of a raw 32-byte Ed25519 public key: hex SHA-256. */
export async function principalId(publicKey) {
  const raw = asBytes(publicKey, "publicKey");
  if (raw.length !== 32) throw new RangeError("an Ed25519 public key is 32 bytes");
  return toHex(new Uint8Array(await requireSubtle().digest("SHA-256", raw)));
}

/** The bytes a signed request's signature covers (docs/protocol.md, "Signed requests"). */
export async function signedRequestMessage({ principal, method, path, body = new Uint8Array(0), timestamp, nonce }) {
  const digest = new Uint8Array(await requireSubtle().digest("SHA-256", asBytes(body, "body")));
  return canonicalEncode({
    label: "sealserve/request",
    principal,
    method: method.toUpperCase(),
    path,
    body_sha256: digest,
    timestamp: BigInt(timestamp),
    nonce,
  });
}

async function signedHeaders(signingKey, publicKey, { method, path, body, timestamp, nonce }) {
  if (typeof path !== "string" || !path.startsWith("/")) throw new TypeError("path must start with '/'");
  const principal = await principalId(publicKey);
  const message = await signedRequestMessage({ principal, method, path, body, timestamp, nonce });
  const signature = new Uint8Array(await subtle.sign({ name: "Ed25519" }, signingKey, message));
  return {
    "x-sealserve-principal": principal,
    "x-sealserve-timestamp": String(timestamp),
    "x-sealserve-nonce": nonce,
    "x-sealserve-signature": toBase64Url(signature),
  };
}

/**
 * The four headers that sign a request as the principal of (`signingKey`, `publicKey`): an
 * Ed25519 CryptoKey and its raw 32-byte public key. `path` is the request target as sent.
 */
export async function signRequest(signingKey, publicKey, { method, path, body = new Uint8Array(0), now = nowSeconds }) {
  const nonce = newRequestId();
  return signedHeaders(signingKey, publicKey, { method, path, body, timestamp: Math.floor(now()), nonce });
}

/**
 * Check a signed request's headers against the principal's raw public key, as a verifier whose
 * clock reads `now` with a `windowS` replay window (replays need state: not checked here).
 * Throws InvalidSignature for every failure.
 */
export async function verifyRequest(publicKey, { method, path, body = new Uint8Array(0), headers, now = nowSeconds, windowS = 300 }) {
  const h = {};
  for (const [k, v] of Object.entries(headers)) h[k.toLowerCase()] = v;
  try {
    const principal = await principalId(publicKey);
    const timestamp = h["x-sealserve-timestamp"] || "";
    const nonce = h["x-sealserve-nonce"] || "";
    if (h["x-sealserve-principal"] !== principal) throw new InvalidSignature();
    if (!/^[0-9]{1,12}$/.test(timestamp) || !/^[0-9a-f]{32}$/.test(nonce)) throw new InvalidSignature();
    if (Math.abs(now() - Number(timestamp)) > windowS) throw new InvalidSignature();
    const signature = fromBase64Url(h["x-sealserve-signature"] || "");
    const message = await signedRequestMessage({ principal, method, path, body, timestamp, nonce });
    const key = await subtle.importKey("raw", asBytes(publicKey, "publicKey"), { name: "Ed25519" }, false, ["verify"]);
    if (!(await subtle.verify({ name: "Ed25519" }, key, signature, message))) throw new InvalidSignature();
  } catch {
    throw new InvalidSignature();
  }
}

// ---- test vectors only ------------------------------------------------------------------------

/**
 * FOR THE TEST VECTORS ONLY (tests/vectors, docs/protocol.md "Test vectors"): seal and sign
 * with a nonce and a time chosen by the caller. Never use these for data: a repeated nonce
 * breaks AES-GCM. The page and `infer` never call them.
 */
export const forTestVectorsOnly = Object.freeze({
  sealWithFixedNonce(key, plaintext, context, { sealedAt, nonce }) {
    const n = asBytes(nonce, "nonce");
    if (n.length !== NONCE_BYTES) throw new RangeError("nonce must be 12 bytes");
    return sealParts(key, plaintext, context, sealedAt, n);
  },
  signRequestWithFixedNonce(signingKey, publicKey, { method, path, body, timestamp, nonce }) {
    return signedHeaders(signingKey, publicKey, { method, path, body, timestamp, nonce });
  },
});
