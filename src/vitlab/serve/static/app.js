// vitlab serve: the page. Everything is drawn from one /api/attention?full=1 answer per image; hovering a patch
// reads its attention row from the tensor held here (no request per hover).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { models: [], info: null, blob: null, data: null, attn: null, hover: null, pinned: null, sampleIndex: 0 };

// viridis, 9 anchors, linearly interpolated
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
  [92, 200, 99], [170, 220, 50], [253, 231, 37]];
function colour(t) {
  t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i;
  return VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
}

function showMessage(text) { $("message").textContent = text || ""; }

async function api(url, options) {
  const response = await fetch(url, options);
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const body = type.includes("json") ? await response.json() : { error: response.statusText };
    throw new Error(body.error || `HTTP ${response.status}`);
  }
  return type.includes("json") ? response.json() : response;
}

// ---- drawing helpers -------------------------------------------------------------------------------------------
function drawImage(canvas, alpha) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.img) return;
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = alpha;
  ctx.drawImage(state.img, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 1;
}

// values: flat array of gh*gw; drawn as cells over whatever the canvas holds
function drawHeat(canvas, values, gh, gw, alpha, lo, hi) {
  const ctx = canvas.getContext("2d");
  lo = lo ?? Math.min(...values); hi = hi ?? Math.max(...values);
  const cw = canvas.width / gw, ch = canvas.height / gh;
  for (let r = 0; r < gh; r++) {
    for (let c = 0; c < gw; c++) {
      const [R, G, B] = colour((values[r * gw + c] - lo) / (hi - lo || 1));
      ctx.fillStyle = `rgba(${R},${G},${B},${alpha})`;
      ctx.fillRect(c * cw, r * ch, Math.ceil(cw), Math.ceil(ch));
    }
  }
}

function outline(canvas, patch, gh, gw, style) {
  if (patch == null) return;
  const ctx = canvas.getContext("2d"), cw = canvas.width / gw, ch = canvas.height / gh;
  ctx.strokeStyle = style; ctx.lineWidth = 2;
  ctx.strokeRect((patch % gw) * cw + 1, Math.floor(patch / gw) * ch + 1, cw - 2, ch - 2);
}

function heatmap(canvas, values, gh, gw, lo, hi) {
  drawImage(canvas, 1);
  drawHeat(canvas, values, gh, gw, 0.65, lo, hi);
}

// ---- attention tensors -----------------------------------------------------------------------------------------
function decodeTensor(t) {
  const bytes = Uint8Array.from(atob(t.data), (ch) => ch.charCodeAt(0));
  return { shape: t.shape, values: new Float32Array(bytes.buffer) };
}

// the row of patch `patch` (0-based over the grid) in `layer`, for head `head` (-1: mean over heads), patch columns
function attentionRow(layer, head, patch) {
  const [, H, N] = state.attn.shape, prefix = state.data.num_prefix_tokens, v = state.attn.values;
  const row = new Float32Array(N - prefix), heads = head < 0 ? [...Array(H).keys()] : [head];
  for (const h of heads) {
    const base = ((layer * H + h) * N + prefix + patch) * N + prefix;
    for (let j = 0; j < N - prefix; j++) row[j] += v[base + j] / heads.length;
  }
  return Array.from(row);
}

function drawOverlay() {
  if (isDetector()) { drawDetections(); return; }
  if (isCaptioner()) { drawCaptionOverlay(); return; }
  const canvas = $("overlay"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.data) return;
  const [gh, gw] = state.data.grid, patch = state.hover ?? state.pinned;
  ctx.strokeStyle = "rgba(255,255,255,0.35)"; ctx.lineWidth = 1;
  for (let r = 1; r < gh; r++) { ctx.beginPath(); ctx.moveTo(0, r * canvas.height / gh); ctx.lineTo(canvas.width, r * canvas.height / gh); ctx.stroke(); }
  for (let c = 1; c < gw; c++) { ctx.beginPath(); ctx.moveTo(c * canvas.width / gw, 0); ctx.lineTo(c * canvas.width / gw, canvas.height); ctx.stroke(); }
  if (patch == null || !state.attn) return;
  const layer = Number($("layer").value), head = Number($("head").value);
  drawHeat(canvas, attentionRow(layer, head, patch), gh, gw, 0.7, 0);
  outline(canvas, patch, gh, gw, "#fff");
  $("patch").textContent = `patch row ${Math.floor(patch / gw) + 1}, col ${(patch % gw) + 1}`;
}

function drawMultiples() {
  const box = $("multiples"), d = state.data, [gh, gw] = d.grid;
  box.replaceChildren();
  const size = Math.max(36, Math.min(72, Math.floor(640 / d.heads)));
  box.style.gridTemplateColumns = `auto repeat(${d.heads}, ${size}px)`;
  box.append(Object.assign(document.createElement("span"), { className: "label" }));
  for (let h = 0; h < d.heads; h++) box.append(Object.assign(document.createElement("span"), { className: "label", textContent: `head ${h + 1}` }));
  d.cls_attention.forEach((heads, l) => {
    box.append(Object.assign(document.createElement("span"), { className: "label", textContent: `layer ${l + 1}` }));
    heads.forEach((map, h) => {
      const c = Object.assign(document.createElement("canvas"), { width: size, height: size, title: `layer ${l + 1}, head ${h + 1}` });
      heatmap(c, map.flat(), gh, gw);
      box.append(c);
    });
  });
}

function drawLogits() {
  const d = state.data, [gh, gw] = d.grid, k = Number($("class").value);
  const values = d.patch_logits[k].flat();
  heatmap($("logits"), values, gh, gw);
  $("logits-range").textContent = `${Math.min(...values).toFixed(2)} … ${Math.max(...values).toFixed(2)}`;
}

function drawPosEmbed() {
  const d = state.data, [gh, gw] = d.grid, canvas = $("posembed");
  if (!d.pos_embed_similarity) { $("posembed-note").textContent = "this model has no absolute position embedding"; return; }
  const patch = state.pinned ?? 0, r = Math.floor(patch / gw), c = patch % gw;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  drawHeat(canvas, d.pos_embed_similarity[r][c].flat(), gh, gw, 1, -1, 1);
  outline(canvas, patch, gh, gw, "#f33");
  $("posembed-note").textContent = `cosine similarity with patch (${r + 1}, ${c + 1}); scale -1 … 1`;
}

function drawDistance() {
  const canvas = $("distance"), ctx = canvas.getContext("2d"), dist = state.data.attention_distance;
  const L = dist.length, H = dist[0].length, ymax = Math.max(1, ...dist.flat()) * 1.1;
  const left = 40, bottom = canvas.height - 30, right = canvas.width - 10, top = 10;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#889"; ctx.fillStyle = "#445"; ctx.font = "11px system-ui";
  ctx.beginPath(); ctx.moveTo(left, top); ctx.lineTo(left, bottom); ctx.lineTo(right, bottom); ctx.stroke();
  const x = (l) => left + (l + 0.5) * (right - left) / L, y = (v) => bottom - v / ymax * (bottom - top);
  for (let l = 0; l < L; l++) ctx.fillText(String(l + 1), x(l) - 3, bottom + 14);
  for (const t of [0, ymax / 2, ymax / 1.1]) ctx.fillText(t.toFixed(1), 4, y(t) + 4);
  ctx.fillText("layer", (left + right) / 2 - 12, canvas.height - 3);
  dist.forEach((heads, l) => heads.forEach((v, h) => {
    const [R, G, B] = colour(H > 1 ? h / (H - 1) : 0.5);
    ctx.fillStyle = `rgb(${R},${G},${B})`;
    ctx.beginPath(); ctx.arc(x(l) + (h - (H - 1) / 2) * 3, y(v), 4, 0, 2 * Math.PI); ctx.fill();
  }));
  ctx.fillStyle = "#445"; ctx.fillText("pixels", left + 4, top + 8);
  ctx.textAlign = "right"; ctx.fillText(`colour: head 1 … ${H}`, right, top + 8); ctx.textAlign = "left";
}

function drawPrediction(topk) {
  $("prediction").replaceChildren(...topk.map((p) => {
    const li = document.createElement("li");
    li.className = "row";
    li.textContent = `${p.class} ${(100 * p.probability).toFixed(1)}%`;
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.width = `${Math.max(1, 100 * p.probability)}%`;
    li.append(bar);
    return li;
  }));
}

function drawAll() {
  drawImage($("image"), 1);
  drawOverlay();
  heatmap($("rollout"), state.data.rollout.flat(), ...state.data.grid, 0, 1);
  drawMultiples(); drawLogits(); drawPosEmbed(); drawDistance();
}

// ---- detection: boxes from /api/attention; a box's query's cross-attention over the encoder's grid ------------
const BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
  "#469990", "#dcbeff", "#9a6324"];
const boxColour = (index) => BOX_COLOURS[index % BOX_COLOURS.length];
function isDetector() { return state.info?.task === "detection"; }

// boxes are xyxy in the upload's pixels; the canvas shows the upload squashed to its square (as the model sees it)
function boxOnCanvas(d, canvas) {
  const [H, W] = state.det.image_size, sx = canvas.width / W, sy = canvas.height / H;
  const [x0, y0, x1, y1] = d.box_xyxy;
  return [x0 * sx, y0 * sy, x1 * sx, y1 * sy];
}

function drawDetections() {
  const canvas = $("overlay"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.det) return;
  const [gh, gw] = state.det.grid, chosen = state.det.detections[state.selected];
  if (chosen) {
    const head = Number($("head").value), map = head < 0 ? chosen.attention : chosen.attention_heads[head];
    drawHeat(canvas, map.flat(), gh, gw, 0.7, 0);
  }
  ctx.font = "12px system-ui"; ctx.textBaseline = "top";
  state.det.detections.forEach((d, i) => {
    const [x0, y0, x1, y1] = boxOnCanvas(d, canvas), selected = i === state.selected;
    ctx.strokeStyle = selected ? "#fff" : boxColour(d.index); ctx.lineWidth = selected ? 3 : 2;
    ctx.setLineDash(state.det.below_threshold ? [5, 4] : []);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const text = `${d.class} ${d.score.toFixed(2)}`, tx = Math.max(0, Math.min(canvas.width - 80, x0)), ty = Math.max(0, y0);
    ctx.fillStyle = boxColour(d.index); ctx.fillRect(tx, ty, ctx.measureText(text).width + 6, 16);
    ctx.fillStyle = "#fff"; ctx.fillText(text, tx + 3, ty + 2);
  });
  ctx.setLineDash([]);
  $("patch").textContent = chosen ? `query ${chosen.query}: ${chosen.class} ${chosen.score.toFixed(2)}` : "";
}

function drawDetectionList() {
  const det = state.det;
  $("detections").replaceChildren(...det.detections.map((d, i) => {
    const li = document.createElement("li");
    li.textContent = `${d.class} ${(100 * d.score).toFixed(1)}% (query ${d.query})`;
    li.style.setProperty("--colour", boxColour(d.index));
    li.classList.toggle("selected", i === state.selected);
    li.addEventListener("click", () => selectDetection(i));
    return li;
  }));
  $("detections-note").textContent = det.below_threshold
    ? `no box scores above ${det.threshold.toFixed(2)}: the ${det.detections.length} best queries, dashed`
    : `${det.detections.length} boxes above ${det.threshold.toFixed(2)}; the ${det.grid[0]}×${det.grid[1]} encoder grid, ${det.heads} heads`;
}

function selectDetection(i) {
  state.selected = i;
  drawDetectionList();
  drawDetections();
}

// the smallest box under the pointer (the innermost of nested boxes), or null
function detectionAt(event) {
  if (!state.det) return null;
  const canvas = $("overlay"), rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) / rect.width * canvas.width, y = (event.clientY - rect.top) / rect.height * canvas.height;
  let best = null, bestArea = Infinity;
  state.det.detections.forEach((d, i) => {
    const [x0, y0, x1, y1] = boxOnCanvas(d, canvas), area = (x1 - x0) * (y1 - y0);
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && area < bestArea) { best = i; bestArea = area; }
  });
  return best;
}

// keep: the query to keep selected if it is still detected (after a threshold change)
async function analyseDetection(blob, keep) {
  document.body.dataset.status = "working";
  const body = form(blob);
  body.append("threshold", $("threshold").value);
  try {
    const det = await api("/api/attention", { method: "POST", body });
    const url = URL.createObjectURL(blob);
    try { state.img = await loadImage(url); } finally { URL.revokeObjectURL(url); }
    state.det = det;
    const kept = det.detections.findIndex((d) => d.query === keep);
    state.selected = kept >= 0 ? kept : null;
    if (Number($("head").options.length) !== det.heads + 1) {
      setOptions($("head"), [[-1, "mean"], ...[...Array(det.heads).keys()].map((h) => [h, `${h + 1}`])], -1);
    }
    drawImage($("image"), 1);
    drawDetectionList();
    drawDetections();
    document.body.dataset.status = "ready";
  } catch (e) {
    showMessage(e.message);
    document.body.dataset.status = "error";
  }
}

// ---- captioning: the caption from /api/attention; a word's attention over the image-token grid ---------------
function isCaptioner() { return state.info?.task === "captioning"; }

function drawCaptionOverlay() {
  const canvas = $("overlay"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.cap) return;
  const [gh, gw] = state.cap.grid, chosen = state.cap.words[state.word];
  if (chosen) drawHeat(canvas, chosen.attention.flat(), gh, gw, 0.55, 0);   // lighter: the scene shows through
  $("patch").textContent = chosen ? `word ${state.word + 1}: "${chosen.word}"` : "";
}

function drawCaptionWords() {
  const cap = state.cap;
  $("caption").replaceChildren(...cap.words.map((w, i) => {
    const b = Object.assign(document.createElement("button"), { type: "button", textContent: w.word });
    b.classList.toggle("selected", i === state.word);
    b.addEventListener("click", () => selectWord(i));
    return b;
  }));
  $("caption-note").textContent = cap.words.length
    ? `${cap.words.length} words; each map is the ${cap.decoder === "lstm" ? "soft attention" : "last decoder layer's cross-attention (mean over heads)"} over the ${cap.grid[0]}×${cap.grid[1]} image tokens, summing to 1`
    : "the model generated an empty caption";
}

function selectWord(i) {
  state.word = i;
  drawCaptionWords();
  drawCaptionOverlay();
}

async function analyseCaption(blob) {
  try {
    const cap = await api("/api/attention", { method: "POST", body: form(blob) });
    state.img = await loadImage(cap.image);
    state.cap = cap; state.word = null;
    drawImage($("image"), 1);
    drawCaptionWords();
    drawCaptionOverlay();
    document.body.dataset.status = "ready";
  } catch (e) {
    showMessage(e.message);
    document.body.dataset.status = "error";
  }
}

// ---- requests --------------------------------------------------------------------------------------------------
function form(blob) {
  const f = new FormData();
  f.append("image", blob, blob.name || "image.png");
  f.append("model", $("model").value);
  return f;
}

// the analysis with the full attention tensors (hover needs them); a model too large for them gets the rest
async function attentionData(blob) {
  try {
    return await api("/api/attention?full=1", { method: "POST", body: form(blob) });
  } catch (e) {
    if (!e.message.includes("without full=1")) throw e;
    return api("/api/attention", { method: "POST", body: form(blob) });
  }
}

// a model without attention over patches: the prediction and the image, nothing else
async function predictionOnly(blob, prediction) {
  state.data = null; state.attn = null;
  drawPrediction(prediction.top_k);
  const url = URL.createObjectURL(blob);
  try { state.img = await loadImage(url); } finally { URL.revokeObjectURL(url); }
  drawImage($("image"), 1);
  $("overlay").getContext("2d").clearRect(0, 0, $("overlay").width, $("overlay").height);
  showMessage(`${state.info.name} has no attention over patches: prediction only`);
}

async function analyse(blob, label) {
  state.blob = blob; state.hover = null; state.pinned = null;
  document.body.dataset.status = "working";
  showMessage("");
  $("source").textContent = label || blob.name || "";
  if (isDetector()) { await analyseDetection(blob, null); return; }
  if (isCaptioner()) { await analyseCaption(blob); return; }
  try {
    const [prediction, data] = await Promise.all([
      api("/api/predict", { method: "POST", body: form(blob) }),
      state.info.attention ? attentionData(blob) : null]);
    if (!data) {
      await predictionOnly(blob, prediction);
      document.body.dataset.status = "ready";
      return;
    }
    drawPrediction(prediction.top_k);
    state.data = data; state.attn = data.attention ? decodeTensor(data.attention) : null;
    if (!state.attn) showMessage("this model's full attention is past the server's size limit: no per-patch hover");
    setOptions($("layer"), [...Array(data.layers).keys()].map((l) => [l, `${l + 1}`]), data.layers - 1);
    setOptions($("head"), [[-1, "mean"], ...[...Array(data.heads).keys()].map((h) => [h, `${h + 1}`])], -1);
    $("class").value = String(prediction.top_k[0].index);
    $("fusion").value = "mean"; $("discard").value = "0"; $("discard-value").textContent = "0.00";
    state.img = await loadImage(data.image);
    drawAll();
    document.body.dataset.status = "ready";
  } catch (e) {
    showMessage(e.message);
    document.body.dataset.status = "error";
  }
}

async function updateRollout() {
  if (!state.blob || !state.data) return;
  const fusion = $("fusion").value, discard = $("discard").value;
  $("discard-value").textContent = Number(discard).toFixed(2);
  try {
    const d = await api(`/api/attention?head_fusion=${fusion}&discard_ratio=${discard}`, { method: "POST", body: form(state.blob) });
    if ($("fusion").value === fusion && $("discard").value === discard) heatmap($("rollout"), d.rollout.flat(), ...d.grid, 0, 1);
  } catch (e) { showMessage(e.message); }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the server's image did not load"));
    img.src = src;
  });
}

function setOptions(select, options, value) {
  select.replaceChildren(...options.map(([v, text]) => Object.assign(document.createElement("option"), { value: String(v), textContent: text })));
  select.value = String(value);
}

async function sample(source) {
  const index = state.sampleIndex++;
  try {
    const response = await api(`/api/sample?model=${encodeURIComponent($("model").value)}&source=${source}&index=${index}`);
    const label = response.headers.get("X-Vitlab-Label");
    const blob = await response.blob();
    const what = { val: "validation image", shapes: "shapes sample", scenes: "scenes sample" }[source];
    await analyse(blob, `${what} #${index} (${source === "scenes" ? "" : "true: "}${label})`);
  } catch (e) { showMessage(e.message); }
}

function modelChanged() {
  state.info = state.models.find((m) => m.name === $("model").value);
  document.body.dataset.task = state.info.task || "classification";
  state.data = null; state.det = null; state.cap = null; $("patch").textContent = "";
  setOptions($("class"), state.info.classes.map((c, i) => [i, c]), 0);
  $("val").disabled = !state.info.validation_images;
  if (!state.info.attention) showMessage(`${state.info.name} has no attention over patches: prediction only`);
  if (state.blob) analyse(state.blob, $("source").textContent);
}

function patchAt(event) {
  if (!state.data) return null;
  const rect = $("overlay").getBoundingClientRect(), [gh, gw] = state.data.grid;
  const c = Math.floor((event.clientX - rect.left) / rect.width * gw), r = Math.floor((event.clientY - rect.top) / rect.height * gh);
  return r >= 0 && r < gh && c >= 0 && c < gw ? r * gw + c : null;
}

async function start() {
  const { models } = await api("/api/models");
  state.models = models;
  setOptions($("model"), models.map((m) => [m.name, `${m.name} (${m.model})`]), models[0].name);
  modelChanged();
  $("model").addEventListener("change", modelChanged);
  $("file").addEventListener("change", () => { if ($("file").files[0]) analyse($("file").files[0]); });
  $("shapes").addEventListener("click", () => sample("shapes"));
  $("scenes").addEventListener("click", () => sample("scenes"));
  $("val").addEventListener("click", () => sample("val"));
  $("layer").addEventListener("change", drawOverlay);
  $("head").addEventListener("change", drawOverlay);
  $("class").addEventListener("change", () => state.data && drawLogits());
  $("fusion").addEventListener("change", updateRollout);
  let timer = null;
  $("discard").addEventListener("input", () => { $("discard-value").textContent = Number($("discard").value).toFixed(2); clearTimeout(timer); timer = setTimeout(updateRollout, 150); });
  const overlay = $("overlay");
  overlay.addEventListener("mousemove", (e) => { const p = patchAt(e); if (p !== state.hover) { state.hover = p; drawOverlay(); } });
  overlay.addEventListener("mouseleave", () => { state.hover = null; drawOverlay(); });
  overlay.addEventListener("click", (e) => {
    if (isDetector()) { selectDetection(detectionAt(e)); return; }
    state.pinned = patchAt(e); if (state.data) { drawOverlay(); drawPosEmbed(); }
  });
  $("threshold").addEventListener("input", () => { $("threshold-value").textContent = Number($("threshold").value).toFixed(2); clearTimeout(timer); timer = setTimeout(() => state.blob && isDetector() && analyseDetection(state.blob, state.det?.detections[state.selected]?.query), 150); });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault(); document.body.classList.remove("dragging");
    if (e.dataTransfer.files[0]) analyse(e.dataTransfer.files[0]);
  });
  document.body.dataset.status = "idle";
}

start().catch((e) => showMessage(e.message));
