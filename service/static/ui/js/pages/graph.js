// The graph page (#/graphs/<graph id>[?job=<job id>&node=<node id>]): the stored graph drawn in
// layers (graph-draw.js), an example and parameters to run it on, one explain call
// (POST v1/graphs/{id}/explain) and every node's forward value and gradient d(loss)/d(node) on
// the drawing; a node (click, or Enter when focused) opens a side panel with its full value and
// gradient (the first 1,000 numbers).
//
// API: GET v1/graphs/{id} (the document), GET v1/graphs/{id}/analysis (inferred dtypes and
// shapes; when the server has no such route, the declared ones), with ?job=: GET v1/jobs/{id},
// GET v1/jobs/{id}/data?offset=&limit=1 (a row of its data) and GET v1/jobs/{id}/result (its
// trained parameters).

import { api, ApiError } from "../api.js";
import { append, clear, download, h, problemBox } from "../dom.js";
import { hasOperation, openapi } from "../openapi.js";
import { count, decodeTensor, flatten, fmtValue, isTensor, nest, shapeOf, summarize } from "../tensor.js";
import { drawGraph, shapeText } from "./graph-draw.js";

const PANEL_CAP = 1000;

export async function mount(root, ctx) {
  const id = ctx.params.id;
  const jobId = ctx.query.get("job");
  const highlight = ctx.query.get("node");
  ctx.setTitle(`graph ${id.slice(0, 15)}`);
  const enc = encodeURIComponent(id);

  const [doc, spec] = await Promise.all([api.get(`v1/graphs/${enc}`), openapi().catch(() => null)]);
  let analysis = null;
  if (hasOperation(spec, "get", "/v1/graphs/{graph_id}/analysis")) {
    try { analysis = await api.get(`v1/graphs/${enc}/analysis`); } catch (error) { if (!(error instanceof ApiError)) throw error; }
  }
  let job = null, result = null, rowsSupported = false;
  const notes = [];
  if (jobId) {
    job = await api.get(`v1/jobs/${encodeURIComponent(jobId)}`);
    if (job.graph_id && job.graph_id !== id) notes.push(`job ${jobId} trains graph ${job.graph_id}, not this one`);
    if (job.state === "succeeded") {
      try { result = await api.get(`v1/jobs/${encodeURIComponent(jobId)}/result`); }
      catch (error) { if (!(error instanceof ApiError)) throw error; notes.push(`the trained result could not be read: ${error.message}`); }
    }
    rowsSupported = hasOperation(spec, "get", "/v1/jobs/{job_id}/data");
    if (!rowsSupported) notes.push("this API cannot return a job's data rows (no GET /v1/jobs/{id}/data): type an example in");
  }

  const lossNode = (doc.outputs || {})[doc.loss] || (analysis && (analysis.outputs || {})[analysis.loss]) || null;
  const declared = (kind, name, decl) => {
    const t = analysis && analysis.types && analysis.types[name];
    return { id: name, kind, op: null, inputs: [], dtype: t ? t.dtype : decl.dtype, shape: t ? t.shape : decl.shape, doc: decl.doc };
  };
  const baseNodes = [
    ...Object.entries(doc.inputs || {}).map(([name, decl]) => declared("input", name, decl)),
    ...Object.entries(doc.parameters || {}).map(([name, decl]) => declared("parameter", name, decl)),
    ...(doc.nodes || []).map((n) => {
      const t = analysis && analysis.types && analysis.types[n.id];
      return { id: n.id, kind: "node", op: n.op, inputs: n.inputs || [], attrs: n.attrs || {},
               dtype: t ? t.dtype : null, shape: t ? t.shape : null };
    }),
  ];
  let explained = null; // name -> ExplainNode
  const autoDirection = () => (window.innerWidth < 700 ? "TB" : "LR");
  let direction = autoDirection();
  let directionChosen = false;
  let selected = null;
  let drawing = null;

  // -- page skeleton ----------------------------------------------------------------------
  const meta = doc.metadata || {};
  const header = h("header", { class: "gp-header" },
    h("h1", {}, doc.name || "graph", " ", h("span", { class: "muted gp-id mono", title: id }, id.length > 22 ? id.slice(0, 22) + "…" : id)),
    meta.description ? h("p", { class: "muted gp-desc" }, meta.description) : null,
    h("p", { class: "gp-links" }, h("a", { href: `#/submit?graph=${encodeURIComponent(id)}`, id: "gp-train" }, "Train this graph"),
      " · ", h("a", { href: api.url(`v1/graphs/${enc}`), download: `${doc.name || "graph"}.json`, id: "gp-download",
        onclick: (event) => { event.preventDefault(); downloadDoc(); } }, "Download the document")),
    job ? h("p", {}, "Explaining with job ", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id), ` (${job.state})`) : null,
    notes.map((n) => h("p", { class: "muted gp-note" }, n)));

  function downloadDoc() { download(`${doc.name || "graph"}.json`, JSON.stringify(doc, null, 2) + "\n", "application/json"); }

  // example: typed in, or a row of the job's data
  const inputFields = new Map();
  const paramFields = new Map();
  const fieldFor = (kind, name, decl, initial) => {
    const input = h("textarea", { rows: 1, spellcheck: "false", class: "mono gp-tensor", "data-field": `${kind}:${name}`,
      "aria-label": `${name} (${decl.dtype} [${(decl.shape || []).join(", ")}]) as JSON numbers` });
    input.value = initial;
    const error = h("div", { class: "error gp-field-error", "data-error-for": `${kind}:${name}` });
    return { input, error, el: h("label", { class: "gp-field" },
      h("span", { class: "gp-field-name" }, h("b", {}, name), " ", h("span", { class: "muted" }, shapeText(decl.dtype, decl.shape))),
      input, error) };
  };
  const zerosFor = (decl, symbolic = 1) => {
    const shape = (decl.shape || []).map((d) => (typeof d === "number" ? d : symbolic));
    if (count(shape) > 64) return "";
    return JSON.stringify(nest(new Array(count(shape)).fill(decl.dtype === "bool" ? false : 0), shape));
  };
  for (const [name, decl] of Object.entries(doc.inputs || {})) inputFields.set(name, fieldFor("input", name, decl, zerosFor(decl)));
  const trained = result && result.params ? result.params : null;
  for (const [name, decl] of Object.entries(doc.parameters || {})) {
    const initial = trained && trained[name] ? JSON.stringify(decodeNested(trained[name])) : zerosFor(decl);
    paramFields.set(name, fieldFor("param", name, decl, initial));
  }

  const exampleMode = h("select", { id: "gp-example-mode", "aria-label": "Example" },
    h("option", { value: "typed" }, "typed in"),
    rowsSupported ? h("option", { value: "row" }, "a row of the job's data") : null);
  const rowInput = h("input", { id: "gp-row", type: "number", min: 0, step: 1, value: 0, "aria-label": "Row of the job's data" });
  const rowInfo = h("span", { class: "muted", id: "gp-row-info" });
  const paramMode = h("select", { id: "gp-param-mode", "aria-label": "Parameters" },
    h("option", { value: "initial" }, "initial (drawn with a seed)"),
    trained ? h("option", { value: "trained" }, "the job's trained result") : null,
    h("option", { value: "typed" }, "typed in"));
  const jobSeed = job && job.settings && Number.isInteger(job.settings.seed) ? job.settings.seed : 0;
  const seedInput = h("input", { id: "gp-seed", type: "number", min: 0, step: 1, value: jobSeed, "aria-label": "Seed" });
  const pasteBox = h("textarea", { id: "gp-paste", rows: 3, spellcheck: "false", class: "mono",
    placeholder: '{"x1": {"dtype": "float64", "shape": [1], "data": [1.0]}, ...}' });
  const pasteError = h("div", { class: "error", id: "gp-paste-error" });
  const explainButton = h("button", { type: "submit", class: "primary", id: "gp-explain" }, "Explain");
  const status = h("span", { class: "muted", id: "gp-status", role: "status" });
  const lossOut = h("span", { id: "gp-loss", class: "gp-loss" });
  const problemSlot = h("div", { id: "gp-problem" });

  if (rowsSupported) exampleMode.value = "row";
  if (trained) paramMode.value = "trained";
  const inputGrid = h("div", { class: "gp-fields", id: "gp-inputs" }, [...inputFields.values()].map((f) => f.el));
  const paramGrid = h("div", { class: "gp-fields", id: "gp-params" }, [...paramFields.values()].map((f) => f.el));
  const rowRow = h("div", { class: "row gp-rowpick" }, h("label", { for: "gp-row" }, "Row"), rowInput, rowInfo);
  const seedRow = h("div", { class: "row" }, h("label", { for: "gp-seed" }, "Seed"), seedInput);
  const syncModes = () => {
    const row = exampleMode.value === "row";
    rowRow.hidden = !row;
    inputGrid.hidden = row;
    seedRow.hidden = paramMode.value !== "initial";
    paramGrid.hidden = paramMode.value !== "typed";
  };

  const form = h("form", { class: "card gp-controls", id: "gp-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Example ", exampleMode), rowRow, inputGrid),
    h("fieldset", {}, h("legend", {}, "Parameters ", paramMode), seedRow, paramGrid),
    h("details", { class: "gp-paste" }, h("summary", {}, "Paste a tensor map (JSON) for inputs or parameters"),
      pasteBox, pasteError),
    h("div", { class: "row gp-actions" }, explainButton, status, lossOut),
    problemSlot);

  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "gv");
  svg.setAttribute("role", "group");
  svg.setAttribute("aria-label", `The graph ${doc.name || id}: drag to pan, wheel to zoom`);
  const zoomIn = h("button", { type: "button", class: "ghost", "aria-label": "Zoom in", onclick: () => drawing && drawing.zoom(1.25) }, "+");
  const zoomOut = h("button", { type: "button", class: "ghost", "aria-label": "Zoom out", onclick: () => drawing && drawing.zoom(0.8) }, "−");
  const fitButton = h("button", { type: "button", class: "ghost", id: "gp-fit", onclick: () => drawing && drawing.fit() }, "Fit");
  const dirButton = h("button", { type: "button", class: "ghost", id: "gp-direction",
    onclick: () => { direction = direction === "LR" ? "TB" : "LR"; directionChosen = true; redraw(); } });
  const legend = h("div", { class: "gp-legend", "aria-hidden": "true" },
    h("span", { class: "gp-key gp-key-value" }, "= value (forward)"),
    h("span", { class: "gp-key gp-key-grad" }, "∂ gradient d(loss)/d(node) (backward)"));
  const toolbar = h("div", { class: "row gp-toolbar" }, fitButton, zoomIn, zoomOut, dirButton, h("span", { class: "spacer" }), legend);
  const panel = h("aside", { class: "gp-panel card", id: "gp-panel", hidden: true, "aria-live": "polite" });
  const canvas = h("div", { class: "gp-canvas" }, toolbar, h("div", { class: "gp-svgwrap" }, svg));
  root.append(header, form, h("div", { class: "gp-main" }, canvas, panel));
  syncModes();

  // -- drawing ----------------------------------------------------------------------------
  function model() {
    const nodes = baseNodes.map((n) => {
      const e = explained && explained.get(n.id);
      return e ? { ...n, dtype: e.dtype, shape: e.shape, value: e.value, grad: e.grad, explained: true } : n;
    });
    return { nodes, loss: lossNode };
  }
  function redraw() {
    dirButton.textContent = direction === "LR" ? "Top to bottom" : "Left to right";
    drawing = drawGraph(svg, model(), { direction, highlight, onSelect: select });
    if (selected) { drawing.markSelected(selected); showPanel(selected); }
  }

  function select(nodeId) {
    selected = nodeId;
    drawing.markSelected(nodeId);
    showPanel(nodeId);
  }

  function closePanel(nodeId) {
    panel.hidden = true;
    selected = null;
    drawing.markSelected(null);
    drawing.fit(true);
    drawing.node(nodeId)?.focus();
  }
  panel.addEventListener("keydown", (event) => { if (event.key === "Escape" && selected) closePanel(selected); });
  svg.addEventListener("keydown", (event) => { if (event.key === "Escape" && selected) closePanel(selected); });

  function showPanel(nodeId) {
    const n = model().nodes.find((x) => x.id === nodeId);
    if (!n) return;
    clear(panel);
    const refit = panel.hidden;
    panel.hidden = false;
    if (refit) drawing.fit(true);
    const source = (doc.nodes || []).find((x) => x.id === nodeId);
    append(panel, [
      h("div", { class: "row gp-panel-head" }, h("h2", {}, nodeId), h("span", { class: "spacer" }),
        h("button", { type: "button", class: "ghost", "aria-label": "Close the node panel",
          id: "gp-panel-close", onclick: () => closePanel(nodeId) }, "×")),
      h("p", {}, h("b", {}, n.kind === "node" ? n.op : n.kind), " · ", h("span", { class: "mono" }, shapeText(n.dtype, n.shape)),
        nodeId === lossNode ? " · the loss" : null),
      n.inputs && n.inputs.length ? h("p", {}, "inputs: ", n.inputs.map((ref, i) => [i ? ", " : "",
        h("a", { href: "#", onclick: (event) => { event.preventDefault(); select(ref); drawing.node(ref)?.focus(); } }, ref)])) : null,
      source && source.attrs && Object.keys(source.attrs).length ? h("p", { class: "mono gp-attrs" }, "attrs: ", JSON.stringify(source.attrs)) : null,
      n.doc ? h("p", { class: "muted" }, n.doc) : null]);
    if (!n.explained) {
      panel.append(h("p", { class: "muted" }, "Explain an example to see this node's value and gradient."));
      return;
    }
    panel.append(tensorBlock("value", "gp-panel-value", n.value, n.shape), tensorBlock("gradient d(loss)/d(" + nodeId + ")", "gp-panel-grad", n.grad, n.shape));
  }

  function tensorBlock(title, cls, value, shape) {
    if (value === null || value === undefined) return h("section", { class: cls }, h("h3", {}, title), h("p", { class: "muted" }, "no gradient flows here"));
    const flat = flatten(value);
    const s = summarize(flat);
    const shown = flat.length <= PANEL_CAP ? pretty(value)
      : JSON.stringify(flat.slice(0, PANEL_CAP)).slice(0, -1) + `, … ${flat.length - PANEL_CAP} more]`;
    return h("section", { class: cls },
      h("h3", {}, title),
      h("p", { class: "muted" }, `${flat.length} value${flat.length === 1 ? "" : "s"}`,
        s.min !== null ? ` · min ${fmtValue(s.min)} · max ${fmtValue(s.max)} · mean ${fmtValue(s.mean)}` : "",
        s.nonfinite ? ` · ${s.nonfinite} non-finite` : "",
        flat.length > PANEL_CAP ? ` · the first ${PANEL_CAP} shown, flattened` : ""),
      h("pre", { class: "gp-numbers" }, shown));
  }

  // -- the example and the explain call ---------------------------------------------------
  function readField(field, decl, kind, name) {
    field.error.textContent = "";
    const text = field.input.value.trim();
    if (!text) throw new FieldError(field, `give ${name} as JSON numbers`);
    let parsed;
    try { parsed = JSON.parse(text); } catch (error) { throw new FieldError(field, `not JSON: ${error.message}`); }
    if (isTensor(parsed)) return parsed;
    return { dtype: decl.dtype, shape: shapeOf(parsed), data: parsed };
  }

  async function gather() {
    const body = {};
    if (exampleMode.value === "row") {
      const row = Math.max(0, Number(rowInput.value) || 0);
      const page = await api.get(`v1/jobs/${encodeURIComponent(jobId)}/data?offset=${row}&limit=1`);
      const map = tensorMap(page);
      if (page && Number.isInteger(page.examples)) {
        rowInput.max = Math.max(0, page.examples - 1);
        rowInfo.textContent = `of ${page.examples} (0 to ${page.examples - 1})`;
      }
      body.inputs = map;
      // show the row in the typed-in fields too, so switching keeps it
      for (const [name, t] of Object.entries(map)) {
        const f = inputFields.get(name);
        if (f) f.input.value = JSON.stringify(decodeNested(t));
      }
    } else {
      body.inputs = {};
      for (const [name, decl] of Object.entries(doc.inputs || {})) body.inputs[name] = readField(inputFields.get(name), decl, "input", name);
    }
    if (paramMode.value === "trained" && trained) body.params = trained;
    else if (paramMode.value === "typed") {
      body.params = {};
      for (const [name, decl] of Object.entries(doc.parameters || {})) body.params[name] = readField(paramFields.get(name), decl, "param", name);
    } else body.seed = Math.max(0, Number(seedInput.value) || 0);
    return body;
  }

  let running = 0;
  async function explain({ auto = false } = {}) {
    const mine = ++running;
    clear(problemSlot);
    status.textContent = "explaining…";
    root.dataset.explained = "pending";
    let body;
    try {
      body = await gather();
      const response = await api.post(`v1/graphs/${enc}/explain`, body);
      if (mine !== running) return;
      explained = new Map(response.nodes.map((n) => [n.name, n]));
      lossOut.textContent = "";
      lossOut.append("loss = ", h("b", { class: "mono", "data-loss": JSON.stringify(response.loss) }, fmtValue(response.loss, 6)));
      status.textContent = "";
      root.dataset.explained = "yes";
      redraw();
      if (highlight && !selected && explained.has(highlight)) { select(highlight); drawing.focusNode(highlight); }
    } catch (error) {
      if (mine !== running) return;
      status.textContent = "";
      root.dataset.explained = "failed";
      if (error instanceof FieldError) {
        error.field.error.textContent = error.message;
        if (!auto) error.field.input.focus();
        return;
      }
      if (!(error instanceof ApiError)) throw error;
      problemSlot.append(problemBox(error));
      for (const e of error.errors) {
        const m = /^\/(inputs|params)\/([^/]+)/.exec(e.location || "");
        const field = m && (m[1] === "inputs" ? inputFields : paramFields).get(m[2].replace(/~1/g, "/").replace(/~0/g, "~"));
        if (field) field.error.textContent = e.message + (e.hint ? ` (${e.hint})` : "");
      }
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); explain(); });
  exampleMode.addEventListener("change", () => { syncModes(); explain(); });
  paramMode.addEventListener("change", () => { syncModes(); explain(); });
  rowInput.addEventListener("change", () => explain());
  pasteBox.addEventListener("input", () => {
    pasteError.textContent = "";
    const text = pasteBox.value.trim();
    if (!text) return;
    let map;
    try { map = JSON.parse(text); } catch (error) { pasteError.textContent = `not JSON: ${error.message}`; return; }
    if (map && map.inputs && typeof map.inputs === "object") map = { ...map.inputs, ...(map.params || {}) }; // an explain body
    let filled = 0, params = 0;
    for (const [name, t] of Object.entries(map || {})) {
      if (!isTensor(t)) continue;
      const f = inputFields.get(name) || paramFields.get(name);
      if (!f) continue;
      f.input.value = JSON.stringify(decodeNested(t));
      filled++;
      if (paramFields.has(name)) params++;
    }
    if (!filled) { pasteError.textContent = "no tensor in it names an input or parameter of this graph"; return; }
    if (filled - params > 0) exampleMode.value = "typed";
    if (params) paramMode.value = "typed";
    syncModes();
  });

  redraw();
  ctx.onThemeChange(() => redraw());
  let resizeTimer = null;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (!directionChosen && autoDirection() !== direction) { direction = autoDirection(); redraw(); }
      else if (drawing) drawing.fit(true);
    }, 60);
  };
  window.addEventListener("resize", onResize);
  explain({ auto: true });
  return () => { running++; clearTimeout(resizeTimer); window.removeEventListener("resize", onResize); };
}

class FieldError extends Error {
  constructor(field, message) { super(message); this.field = field; }
}

// A tensor's values as nested lists (base64 decoded).
function decodeNested(t) {
  if (t.data !== undefined) return t.data;
  const { shape, values } = decodeTensor(t);
  return nest(values, shape);
}

// Nested lists as JSON, one innermost list per line (a matrix reads as rows); numbers exact.
function pretty(value, depth = 0) {
  if (!Array.isArray(value)) return JSON.stringify(value);
  if (!value.some(Array.isArray)) return "[" + value.map((v) => JSON.stringify(v)).join(", ") + "]";
  const pad = " ".repeat(depth + 1);
  return "[" + value.map((v, i) => (i ? pad : "") + pretty(v, depth + 1)).join(",\n") + "]";
}

// The tensor map in a data-rows answer ({data: {...}} or the map itself).
function tensorMap(page) {
  if (page && page.data && typeof page.data === "object" && !isTensor(page.data)) return page.data;
  if (page && page.rows && typeof page.rows === "object") return page.rows;
  return page;
}
