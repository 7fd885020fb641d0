// The gateway's demo page: classify an image with a sealed model, from this browser.
// All cryptography is sealserve.js's (WebCrypto); this file is the user interface and the
// image preprocessing (the Python SDK's, in a canvas).
import { encodeTensors, infer, loadWebCredentials, toHex } from "./sealserve.js";

const $ = (id) => document.getElementById(id);
const IMAGENET_MEAN = [0.485, 0.456, 0.406];
const IMAGENET_STD = [0.229, 0.224, 0.225];
const OPEN_NSFW_MEAN_BGR = [104, 117, 123];
const MAX_PIXELS = 64_000_000;

// What the page did last, for the curious (and the end-to-end test): sizes and bytes only
// of what this tab already holds.
const demo = { state: "idle", last: null };
window.sealserveDemo = demo;

let credentials = null;
let image = null;

function status(state, text) {
  demo.state = state;
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function ready() {
  $("classify").disabled = !(credentials && image && $("model").value);
}

async function loadModels() {
  try {
    const response = await fetch("../v1/models", { cache: "no-store" });
    const { models } = await response.json();
    for (const m of models) $("model").add(new Option(m.model_id, m.model_id));
  } catch {
    status("error", "The gateway's model list could not be read.");
  }
}

$("credentials").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  credentials = null;
  if (!file) return ready();
  try {
    credentials = await loadWebCredentials(await file.text());
    $("who").textContent = `User ${credentials.userId.slice(0, 16)}..., request key for ${credentials.modelId}`;
    if (![...$("model").options].some((o) => o.value === credentials.modelId)) {
      $("model").add(new Option(credentials.modelId, credentials.modelId));
    }
    $("model").value = credentials.modelId;
  } catch (error) {
    $("who").textContent = `Not usable: ${error.message}`;
  }
  ready();
});

$("model").addEventListener("change", ready);

$("image").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  image = null;
  if (file) {
    try {
      image = await createImageBitmap(file);
      if (image.width * image.height > MAX_PIXELS) throw new Error("too many pixels");
      $("preview").src = URL.createObjectURL(file);
      $("preview").hidden = false;
    } catch (error) {
      image = null;
      status("error", `This image cannot be decoded: ${error.message}`);
    }
  }
  ready();
});

// torchvision's evaluation transform: shorter side to 256, centre crop 224, ImageNet
// normalisation, NCHW float32 (sealserve.models.imagenet_preprocess).
function imagenetTensor(bitmap) {
  const resize = 256;
  const crop = 224;
  const [w, h] = bitmap.width <= bitmap.height
    ? [resize, Math.floor((resize * bitmap.height) / bitmap.width)]
    : [Math.floor((resize * bitmap.width) / bitmap.height), resize];
  const left = Math.round((w - crop) / 2);
  const top = Math.round((h - crop) / 2);
  const rgba = pixels(bitmap, w, h, left, top, crop);
  const data = new Float32Array(3 * crop * crop);
  for (let i = 0; i < crop * crop; i++) {
    for (let c = 0; c < 3; c++) {
      data[c * crop * crop + i] = (rgba[4 * i + c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
    }
  }
  return { name: "input", tensor: { dtype: "float32", shape: [1, 3, crop, crop], data } };
}

// Yahoo's open_nsfw pipeline: 256x256, centre 224, BGR minus the Caffe mean, NHWC
// (sealserve.models.open_nsfw_preprocess, without its JPEG round trip).
function openNsfwTensor(bitmap) {
  const rgba = pixels(bitmap, 256, 256, 16, 16, 224);
  const data = new Float32Array(224 * 224 * 3);
  for (let i = 0; i < 224 * 224; i++) {
    for (let c = 0; c < 3; c++) data[3 * i + c] = rgba[4 * i + (2 - c)] - OPEN_NSFW_MEAN_BGR[c];
  }
  return { name: "input:0", tensor: { dtype: "float32", shape: [1, 224, 224, 3], data } };
}

function pixels(bitmap, w, h, left, top, size) {
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, -left, -top, w, h);
  return context.getImageData(0, 0, size, size).data;
}

function topScores(output, labels) {
  const values = Array.from(output.data, Number);
  const sum = values.reduce((a, b) => a + b, 0);
  let probs = values;
  if (!(values.every((v) => v >= 0) && Math.abs(sum - 1) < 1e-3)) {
    const max = Math.max(...values);
    const exps = values.map((v) => Math.exp(v - max));
    const total = exps.reduce((a, b) => a + b, 0);
    probs = exps.map((v) => v / total);
  }
  return probs
    .map((score, index) => ({ index, score, label: labels ? labels[index] : `class ${index}` }))
    .sort((a, b) => b.score - a.score)
    .slice(0, 5);
}

function firstBytes(bytes) {
  return toHex(bytes.subarray(0, 24)).replace(/(..)/g, "$1 ").trim() + " ...";
}

$("classify").addEventListener("click", async () => {
  const modelId = $("model").value;
  if (!credentials || !image) return;
  if (modelId !== credentials.modelId) {
    status("error", `Your request key is for ${credentials.modelId}, not ${modelId}.`);
    return;
  }
  $("classify").disabled = true;
  status("working", "Sealing and sending...");
  try {
    const nsfw = /nsfw/i.test(modelId.split("/")[1]);
    const { name, tensor } = nsfw ? openNsfwTensor(image) : imagenetTensor(image);
    const inputs = new Map([[name, tensor]]);
    const plaintext = encodeTensors(inputs);
    const answer = await infer({
      modelId,
      userId: credentials.userId,
      requestKey: credentials.requestKey,
      inputs: plaintext,
      timeoutMs: 120000,
    });
    const [outputName, output] = [...answer.outputs.entries()][0];
    const rows = topScores(output, nsfw ? ["sfw", "nsfw"] : null);
    const body = $("scores").tBodies[0];
    body.replaceChildren(
      ...rows.map((r) => {
        const tr = document.createElement("tr");
        tr.dataset.index = String(r.index);
        for (const text of [r.label, r.score.toFixed(4)]) {
          const td = document.createElement("td");
          td.textContent = text;
          tr.append(td);
        }
        return tr;
      }),
    );
    const outputPlain = encodeTensors(answer.outputs);
    $("plain-in").textContent = `${plaintext.length.toLocaleString("en")} bytes (${name}: ${tensor.shape.join("x")} float32)`;
    $("plain-out").textContent = `${outputPlain.length.toLocaleString("en")} bytes (${outputName}: ${output.shape.join("x")} ${output.dtype})`;
    $("bytes-in").textContent = `${answer.sealedInput.length.toLocaleString("en")} bytes`;
    $("bytes-out").textContent = `${answer.sealedOutput.length.toLocaleString("en")} bytes`;
    $("head-in").textContent = firstBytes(answer.sealedInput);
    $("head-out").textContent = firstBytes(answer.sealedOutput);
    $("route").textContent = `request id ${answer.requestId}; routed: ${answer.headers.get("x-sealserve-decision") || "-"}; server timing: ${answer.headers.get("server-timing") || "-"}`;
    $("result").hidden = false;
    $("wire").hidden = false;
    demo.last = {
      modelId,
      requestId: answer.requestId,
      top: rows,
      inputPlaintext: plaintext,
      outputPlaintext: outputPlain,
      sealedInput: answer.sealedInput,
      sealedOutput: answer.sealedOutput,
    };
    status("done", `Done: ${rows[0].label} (${rows[0].score.toFixed(3)}).`);
  } catch (error) {
    status("error", `${error.name}: ${error.message}`);
  } finally {
    ready();
  }
});

loadModels().then(ready);
