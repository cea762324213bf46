// The attention page: caption an image through POST /v1/captions and draw where each word
// looked, from the JSON grid, with the drawing rules of GET /v1/overlay (captioner/viz/overlay.py:
// the same as `captioner attend` and `captioner gallery`): one colour scale for every word, shown
// by the legend, and beside the map the word's spread and deletion test (docs/attention.md).
"use strict";

// The canvases hold at most this many pixels on their longest side: enough for the screen,
// and the heat map stays quick to draw for any photo.
const MAX_SIDE = 640;

const page = {
  style: null,        // drawing rules: smooth_sigma_cells, opacity, scale, lut [[r, g, b] x N]
  file: null,         // the image being shown
  bitmap: null,
  result: null,       // its entry of the last response
  kernels: null,      // {kx, ky} for the canvas size and grid (see heatKernels)
  pinned: null,       // word index kept on screen after a tap or click
  request: 0,         // number of the latest request: older answers are dropped
};

const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function start() {
  try {
    const [model, style] = await Promise.all([getJSON("/v1/model"), getJSON("/v1/overlay")]);
    page.style = style;
    $("heat").style.opacity = style.opacity;
    const beam = $("beam");
    beam.max = model.limits.max_beam_size;
    beam.value = model.decoding_defaults.beam_size;
    drawLegend(style.lut, model.legend);
    $("model-info").textContent =
      `${model.backbone}, ${model.grid.rows}×${model.grid.cols} attention grid, ` +
      `${model.vocab_size} words` + describeMetrics(model.metrics);
    document.body.dataset.state = "ready";
  } catch (error) {
    drawLegend(style.lut, model.legend);
    $("model-info").textContent = "";
    setStatus(`The service did not answer (${error.message}). Is \`captioner serve\` running?`, true);
    document.body.dataset.state = "error";
  }
}

// The colour bar: the LUT low to high, left to right, with α at the ticks GET /v1/model gives.
function drawLegend(lut, ticks) {
  const step = Math.max(1, Math.floor(lut.length / 32));
  const stops = [];
  for (let i = 0; i < lut.length; i += step) stops.push(`rgb(${lut[i].join(",")}) ${((100 * i) / (lut.length - 1)).toFixed(1)}%`);
  stops.push(`rgb(${lut[lut.length - 1].join(",")}) 100%`);
  $("legend-bar").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  $("legend-ticks").replaceChildren(
    ...ticks.map(([at, label]) => {
      const tick = document.createElement("span");
      tick.textContent = label.replace("\n", " ");
      tick.style.left = `${100 * at}%`;
      tick.classList.toggle("end", at > 0.9);
      return tick;
    })
  );
}

// The test metrics the header shows, in this order (metrics.json's keys, without "test/"), in words.
const METRIC_WORDS = {
  "BLEU-4": "BLEU-4",
  CIDEr: "CIDEr",
  pointing_game: "pointing game",
  chance_pointing_game: "pointing game by chance",
  attention_in_box: "attention in box",
  object_deletion_faithfulness: "deletion faithfulness of object words",
};

function describeMetrics(metrics) {
  if (!metrics) return "";
  const shown = Object.entries(METRIC_WORDS)
    .filter(([name]) => typeof metrics[`test/${name}`] === "number")
    .map(([name, words]) => `${words} ${metrics[`test/${name}`].toFixed(3)}`);
  return shown.length ? ` · ${shown.join(", ")}` : "";
}

// ---- captioning -----------------------------------------------------------------------

async function caption(file) {
  if (!file) return;
  if (!page.style) {
    setStatus("The page is still loading the model description; try again in a moment.", true);
    return;
  }
  const number = ++page.request;
  page.file = file;
  document.body.dataset.state = "captioning";
  setStatus(`Captioning ${file.name}…`);
  const form = new FormData();
  form.append("images", file, file.name);
  form.append("beam_size", $("beam").value);
  form.append("faithfulness", "1");
  let body;
  let ok = false;
  try {
    const [response, bitmap] = await Promise.all([
      fetch("/v1/captions", { method: "POST", body: form }),
      createImageBitmap(file).catch(() => null),
    ]);
    body = await response.json();
    ok = response.ok;
    if (number !== page.request) return;
    if (ok) page.bitmap = bitmap;
  } catch (error) {
    if (number !== page.request) return;
    showFailure(`The request failed: ${error.message}`);
    return;
  }
  const entry = body.results && body.results[0];
  if (!ok || !entry || entry.error || !page.bitmap) {
    const reason = (entry && entry.error) || body.detail || "the browser could not open this image";
    showFailure(`${file.name}: ${reason}`);
    return;
  }
  showResult(entry);
}

function showFailure(text) {
  setStatus(text, true);
  document.body.dataset.state = "error";
}

function showResult(entry) {
  page.result = entry;
  page.pinned = null;
  const { width, height } = canvasSize(page.bitmap.width, page.bitmap.height);
  for (const canvas of [$("image"), $("heat")]) {
    canvas.width = width;
    canvas.height = height;
  }
  // As wide as the column allows, but never taller than most of the window.
  $("stage").style.maxWidth = `calc(64vh * ${width / height})`;
  $("image").getContext("2d").drawImage(page.bitmap, 0, 0, width, height);
  $("heat").getContext("2d").clearRect(0, 0, width, height);
  page.kernels = heatKernels(width, height, entry.grid.rows, entry.grid.cols, page.style.smooth_sigma_cells);

  const words = $("caption");
  words.replaceChildren(
    ...entry.tokens.map((token, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "word";
      button.textContent = token;
      button.dataset.index = index;
      button.setAttribute("aria-pressed", "false");
      return button;
    })
  );
  $("score").textContent = `score ${entry.score.toFixed(3)} (log-probability per word)`;
  $("looking").textContent = "";
  $("faithfulness").textContent = "";
  $("result").hidden = false;
  setStatus(`${entry.image.width}×${entry.image.height} image: hover, tap or focus a word.`);
  document.body.dataset.state = "captioned";
}

function canvasSize(width, height) {
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

// ---- drawing attention ----------------------------------------------------------------
// The map of a word is K_y · A · K_xᵀ: A its (rows × cols) grid, K = G · U with U the bilinear
// upsampling (pixel centres, edges clamped) and G the Gaussian blur (edges replicated). That is
// captioner.overlay.attention_map(smooth=True), both steps being linear and separable.

function heatKernels(width, height, rows, cols, sigmaCells) {
  const sigma = sigmaCells * Math.min(height / rows, width / cols);
  return { kx: axisKernel(width, cols, sigma), ky: axisKernel(height, rows, sigma) };
}

// (size × cells) weights: pixel i of the blurred, upsampled axis from the grid cells.
function axisKernel(size, cells, sigma) {
  const upsample = new Float64Array(size * cells);
  for (let i = 0; i < size; i++) {
    const source = Math.min(Math.max(((i + 0.5) * cells) / size - 0.5, 0), cells - 1);
    const low = Math.floor(source);
    const high = Math.min(low + 1, cells - 1);
    upsample[i * cells + low] += 1 - (source - low);
    upsample[i * cells + high] += source - low;
  }
  const radius = Math.max(1, Math.ceil(3 * sigma));
  const taps = [];
  let total = 0;
  for (let offset = -radius; offset <= radius; offset++) {
    const weight = Math.exp(-0.5 * (offset / sigma) ** 2);
    taps.push(weight);
    total += weight;
  }
  const kernel = new Float64Array(size * cells);
  for (let i = 0; i < size; i++) {
    for (let t = 0; t < taps.length; t++) {
      const j = Math.min(Math.max(i + t - radius, 0), size - 1);
      const weight = taps[t] / total;
      for (let c = 0; c < cells; c++) kernel[i * cells + c] += weight * upsample[j * cells + c];
    }
  }
  return kernel;
}

function drawAttention(index) {
  const canvas = $("heat");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  if (index === null) {
    context.clearRect(0, 0, width, height);
    $("looking").textContent = "";
    $("faithfulness").textContent = "";
    return;
  }
  const grid = page.result.attention[index];
  const rows = grid.length;
  const cols = grid[0].length;
  const { kx, ky } = page.kernels;
  // rows × width: each grid row spread along x, then the rows spread along y.
  const across = new Float64Array(rows * width);
  for (let r = 0; r < rows; r++) {
    for (let x = 0; x < width; x++) {
      let sum = 0;
      for (let c = 0; c < cols; c++) sum += grid[r][c] * kx[x * cols + c];
      across[r * width + x] = sum;
    }
  }
  const heat = new Float64Array(height * width);
  let low = Infinity;
  let high = -Infinity;
  const cells = rows * cols;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let sum = 0;
      for (let r = 0; r < rows; r++) sum += ky[y * rows + r] * across[r * width + x];
      heat[y * width + x] = sum;
      if (sum < low) low = sum;
      if (sum > high) high = sum;
    }
  }
  const lut = page.style.lut;
  const size = lut.length;
  const pixels = context.createImageData(width, height);
  for (let p = 0; p < heat.length; p++) {
    const scaled = scaleOf(heat[p], cells, low, high);
    const colour = lut[Math.min(Math.max(Math.floor(scaled * size), 0), size - 1)];
    pixels.data[4 * p] = colour[0];
    pixels.data[4 * p + 1] = colour[1];
    pixels.data[4 * p + 2] = colour[2];
    pixels.data[4 * p + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  $("looking").textContent = `· showing where “${page.result.tokens[index]}” looked`;
  $("faithfulness").textContent = describeFaithfulness(page.result.faithfulness && page.result.faithfulness[index]);
}

// HeatmapStyle.scaled: "relative" is log(α·P) / log(P) clipped to 0..1 (uniform and below: 0,
// α = 1: 1), the same range for every word; "word" stretches each map to its own low..high.
function scaleOf(value, cells, low, high) {
  if (page.style.scale === "word") return high > low ? (value - low) / (high - low) : 0;
  if (cells < 2 || value <= 0) return 0;
  return Math.min(Math.max(Math.log(value * cells) / Math.log(cells), 0), 1);
}

// One word's deletion test (captioner/evaluation/faithfulness.py, WordDeletion.as_json).
function describeFaithfulness(entry) {
  if (!entry) return "";
  const spread = `half of α on ${Math.round(100 * entry.spread)}% of the image · `;
  const look = `without its look: ${entry.p.toFixed(2)} → ${entry.p_no_look.toFixed(2)}`;
  if (entry.faithful === null) {
    const why = entry.erased[0] === null ? "not measured" : "does not depend on the image";
    return `${spread}${look}, ${why}`;
  }
  return (
    `${spread}${look}; erasing cells by α: area ${entry.area_attention.toFixed(2)}, ` +
    `random orders ≥ ${entry.area_random_min.toFixed(2)}: ${entry.faithful ? "faithful" : "not faithful"}`
  );
}

function wordOf(target) {
  const button = target.closest && target.closest("button.word");
  return button ? Number(button.dataset.index) : null;
}

function show(index) {
  const shown = index === null ? page.pinned : index;
  for (const button of document.querySelectorAll("button.word")) {
    button.classList.toggle("shown", Number(button.dataset.index) === shown);
    button.setAttribute("aria-pressed", String(Number(button.dataset.index) === page.pinned));
  }
  drawAttention(shown);
}

// ---- wiring -----------------------------------------------------------------------------

function wire() {
  const words = $("caption");
  words.addEventListener("mouseover", (event) => {
    const index = wordOf(event.target);
    if (index !== null) show(index);
  });
  words.addEventListener("mouseleave", () => show(null));
  words.addEventListener("focusin", (event) => show(wordOf(event.target)));
  words.addEventListener("focusout", () => show(null));
  words.addEventListener("click", (event) => {
    const index = wordOf(event.target);
    if (index === null) return;
    page.pinned = page.pinned === index ? null : index; // a tap pins a word; a second tap unpins it
    show(index);
  });
  words.addEventListener("keydown", (event) => {
    const buttons = [...words.querySelectorAll("button.word")];
    const at = buttons.indexOf(document.activeElement);
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
    if (step && at >= 0) {
      event.preventDefault();
      buttons[(at + step + buttons.length) % buttons.length].focus();
    } else if (event.key === "Escape") {
      page.pinned = null;
      show(null);
    }
  });

  $("file").addEventListener("change", (event) => caption(event.target.files[0]));
  $("beam").addEventListener("change", () => {
    if (page.file && $("beam").checkValidity()) caption(page.file);
  });
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    caption(event.dataTransfer.files[0]);
  });
  // A file dropped next to the zone would make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

wire();
start();
