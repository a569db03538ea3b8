// The graph drawing: a layered layout (dagre) of a graph document as SVG, every node a box with
// its id, op, dtype/shape and (after an explain call) its forward value and its gradient
// d(loss)/d(node); pan (drag), zoom (wheel, buttons) and fit-to-view.
//
//   const drawing = drawGraph(svg, model, { direction: "LR", onSelect(id) {} });
//   drawing.fit(); drawing.zoom(1.2); drawing.focusNode(id);
//
// model = { nodes: [{ id, kind: "input"|"parameter"|"node", op, inputs, dtype, shape,
//                     value?, grad?, explained? }], loss: <node id> }
// Layers: inputs and parameters first (layer 0), the loss last; a constant sits just before its
// first consumer. dagre is given those layers as exact edge lengths (minlen), so its ranking keeps them.

import dagre from "../../../vendor/@dagrejs/dagre/dist/dagre.esm.js";
import { count, flatten, fmtValue, summarize } from "../tensor.js";

const SVG = "http://www.w3.org/2000/svg";
const CHAR = 7.4;   // px per character at the node font sizes (monospace 12px)
const LINE = 17;
const PAD = 9;
const MIN_READABLE = 0.6;
const NARROW = 700; // px of drawing width below which the initial view keeps the text readable

export const OP_SYMBOLS = {
  mul: "×", add: "+", sub: "−", div: "÷", neg: "−x", exp: "exp", log: "log", sigmoid: "σ", tanh: "tanh",
  relu: "ReLU", matmul: "@", pow: "^", sqrt: "√", reciprocal: "1/x",
};

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function shapeText(dtype, shape) {
  if (!dtype) return "?";
  return `${dtype} [${(shape || []).map((d) => (d === null ? "?" : d)).join(", ")}]`;
}

// One or two lines summarising a tensor value for a node box.
export function valueLines(value, shape) {
  if (value === null || value === undefined) return ["no gradient"];
  const values = flatten(value);
  const n = shape && shape.length ? count(shape) : values.length;
  // one number reads as a number (the type line gives its shape), a few as a list
  if (n <= 4) return [values.length === 1 ? fmtValue(values[0]) : `[${values.map((v) => fmtValue(v)).join(", ")}]`];
  const s = summarize(values);
  const first = values.slice(0, 3).map((v) => fmtValue(v, 3)).join(", ");
  const stats = s.min === null ? `${s.nonfinite} non-finite`
    : `min ${fmtValue(s.min, 3)} max ${fmtValue(s.max, 3)} μ ${fmtValue(s.mean, 3)}${s.nonfinite ? ` · ${s.nonfinite} non-finite` : ""}`;
  return [`[${first}, …]`, stats];
}

function opLabel(node) {
  if (node.kind === "input") return "input";
  if (node.kind === "parameter") return "parameter";
  const sym = OP_SYMBOLS[node.op];
  return sym && sym !== node.op ? `${sym} ${node.op}` : node.op || "";
}

// Layers: sources first, each node after its inputs, constants just before first use, loss last.
export function layers(model) {
  const byId = new Map(model.nodes.map((n) => [n.id, n]));
  const rank = new Map();
  const consumers = new Map();
  for (const n of model.nodes) for (const ref of n.inputs || []) {
    if (!consumers.has(ref)) consumers.set(ref, []);
    consumers.get(ref).push(n.id);
  }
  const visit = (id, stack = new Set()) => {
    if (rank.has(id)) return rank.get(id);
    const n = byId.get(id);
    if (!n || stack.has(id)) return 0;
    stack.add(id);
    const refs = (n.inputs || []).filter((r) => byId.has(r));
    const r = n.kind !== "node" || !refs.length ? 0 : 1 + Math.max(...refs.map((ref) => visit(ref, stack)));
    rank.set(id, r);
    return r;
  };
  for (const n of model.nodes) visit(n.id);
  // nodes with no inputs (constants) move next to their first consumer
  for (const n of model.nodes) {
    if (n.kind === "node" && !(n.inputs || []).length && consumers.has(n.id)) {
      rank.set(n.id, Math.max(0, Math.min(...consumers.get(n.id).map((c) => rank.get(c))) - 1));
    }
  }
  if (model.loss && rank.has(model.loss)) rank.set(model.loss, Math.max(...rank.values()));
  return rank;
}

export function drawGraph(svg, model, { direction = "LR", onSelect = () => {}, highlight = null } = {}) {
  while (svg.firstChild) svg.firstChild.remove();
  const defs = el("defs");
  const marker = el("marker", { id: "gv-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "gv-arrowhead" }));
  defs.append(marker);
  svg.append(defs);
  const viewport = el("g", { class: "gv-viewport" });
  svg.append(viewport);

  // boxes: lines of text per node
  const boxes = new Map();
  for (const n of model.nodes) {
    const lines = [{ cls: "gv-type", text: shapeText(n.dtype, n.shape) }];
    if (n.explained) {
      valueLines(n.value, n.shape).forEach((t, i) => lines.push({ cls: "gv-value", text: (i ? "  " : "= ") + t }));
      valueLines(n.grad, n.shape).forEach((t, i) => lines.push({ cls: n.grad === null || n.grad === undefined ? "gv-nograd" : "gv-grad", text: (i ? "  " : "∂ ") + t }));
    }
    const head = n.id.length + 2 + opLabel(n).length;
    const width = Math.max(96, Math.ceil(CHAR * Math.max(head, ...lines.map((l) => l.text.length)) + 2 * PAD));
    const height = PAD + LINE * (1 + lines.length) + PAD - 4;
    boxes.set(n.id, { lines, width, height });
  }

  const rank = layers(model);
  const g = new dagre.graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir: direction, nodesep: 22, ranksep: direction === "LR" ? 40 : 34, edgesep: 12, marginx: 20, marginy: 20 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of model.nodes) g.setNode(n.id, { width: boxes.get(n.id).width, height: boxes.get(n.id).height });
  const ids = new Set(model.nodes.map((n) => n.id));
  for (const n of model.nodes) (n.inputs || []).forEach((ref, i) => {
    if (ids.has(ref)) g.setEdge(ref, n.id, { minlen: Math.max(1, rank.get(n.id) - rank.get(ref)) }, `${n.id}:${i}`);
  });
  dagre.layout(g);
  const size = g.graph();

  const edgeLayer = el("g", { class: "gv-edges" });
  viewport.append(edgeLayer);
  for (const e of g.edges()) {
    const points = g.edge(e).points || [];
    if (!points.length) continue;
    const d = points.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
    edgeLayer.append(el("path", { d, class: "gv-edge", "marker-end": "url(#gv-arrow)", "data-from": e.v, "data-to": e.w }));
  }

  const nodeLayer = el("g", { class: "gv-nodes" });
  viewport.append(nodeLayer);
  const nodeEls = new Map();
  for (const n of model.nodes) {
    const pos = g.node(n.id);
    const box = boxes.get(n.id);
    const x = pos.x - box.width / 2, y = pos.y - box.height / 2;
    const classes = ["gv-node", `gv-${n.kind}`];
    if (n.id === model.loss) classes.push("gv-loss");
    if (n.op === "constant") classes.push("gv-constant");
    if (highlight && n.id === highlight) classes.push("gv-highlight");
    const label = [`${n.id}: ${opLabel(n)}`, shapeText(n.dtype, n.shape)];
    if (n.explained) label.push(`value ${valueLines(n.value, n.shape).join(" ")}`, `gradient ${valueLines(n.grad, n.shape).join(" ")}`);
    const group = el("g", {
      class: classes.join(" "), transform: `translate(${x.toFixed(1)} ${y.toFixed(1)})`, tabindex: 0, role: "button",
      "aria-label": label.join("; "), "data-node": n.id, "data-kind": n.kind, "data-rank": rank.get(n.id),
      "data-x": pos.x.toFixed(1), "data-y": pos.y.toFixed(1),
    });
    if (n.explained) {
      group.setAttribute("data-value", JSON.stringify(n.value));
      group.setAttribute("data-grad", JSON.stringify(n.grad === undefined ? null : n.grad));
    }
    group.append(el("rect", { width: box.width, height: box.height, rx: 7, class: "gv-box" }));
    const head = el("text", { x: PAD, y: PAD + 11, class: "gv-head" });
    head.append(el("tspan", { class: "gv-id" }, n.id), el("tspan", { class: "gv-op", dx: 8 }, opLabel(n)));
    group.append(head);
    box.lines.forEach((line, i) => group.append(el("text", { x: PAD, y: PAD + 11 + LINE * (i + 1), class: `gv-line ${line.cls}` }, line.text)));
    group.append(el("title", {}, label.join("\n")));
    const select = () => onSelect(n.id);
    group.addEventListener("click", (event) => { if (!moved) select(); event.stopPropagation(); });
    group.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); select(); }
    });
    nodeLayer.append(group);
    nodeEls.set(n.id, group);
  }

  // -- pan and zoom ------------------------------------------------------------------------
  let view = { k: 1, x: 0, y: 0 };
  let moved = false;
  const apply = () => viewport.setAttribute("transform", `translate(${view.x.toFixed(1)} ${view.y.toFixed(1)}) scale(${view.k.toFixed(4)})`);
  const rect = () => svg.getBoundingClientRect();
  const zoomAt = (factor, cx, cy) => {
    const k = Math.min(4, Math.max(0.1, view.k * factor));
    view = { k, x: cx - ((cx - view.x) * k) / view.k, y: cy - ((cy - view.y) * k) / view.k };
    apply();
  };
  // The whole drawing in view; with `readable`, never smaller than MIN_READABLE (a narrow screen
  // then starts at the first layer and is panned).
  const fit = (readable = false) => {
    const r = rect();
    const w = r.width || 800, hgt = r.height || 500;
    let k = Math.min(1.25, w / size.width, hgt / size.height);
    if (readable && k < MIN_READABLE && w < NARROW) {
      k = MIN_READABLE;
      const cx = (w - size.width * k) / 2, cy = (hgt - size.height * k) / 2;
      view = direction === "TB" ? { k, x: cx, y: Math.max(0, cy) } : { k, x: Math.max(0, cx), y: cy };
    } else view = { k, x: (w - size.width * k) / 2, y: (hgt - size.height * k) / 2 };
    apply();
  };
  const onWheel = (event) => {
    event.preventDefault();
    const r = rect();
    zoomAt(Math.exp(-event.deltaY * 0.0015), event.clientX - r.left, event.clientY - r.top);
  };
  let drag = null;
  const onDown = (event) => {
    if (event.button !== 0) return;
    drag = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y, id: event.pointerId };
    moved = false;
  };
  const onMove = (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (!moved && Math.hypot(dx, dy) < 4) return;
    if (!moved) { moved = true; svg.setPointerCapture(drag.id); svg.classList.add("gv-dragging"); }
    view = { ...view, x: drag.vx + dx, y: drag.vy + dy };
    apply();
  };
  const onUp = () => {
    if (drag && moved && svg.hasPointerCapture(drag.id)) svg.releasePointerCapture(drag.id);
    drag = null;
    svg.classList.remove("gv-dragging");
    setTimeout(() => { moved = false; }, 0);
  };
  svg.onwheel = onWheel;
  svg.onpointerdown = onDown;
  svg.onpointermove = onMove;
  svg.onpointerup = onUp;
  svg.onpointercancel = onUp;
  svg.setAttribute("data-width", size.width.toFixed(0));
  svg.setAttribute("data-height", size.height.toFixed(0));
  fit(true);

  return {
    fit: (readable = false) => fit(readable),
    zoom(factor) { const r = rect(); zoomAt(factor, r.width / 2, r.height / 2); },
    pan(dx, dy) { view = { ...view, x: view.x + dx, y: view.y + dy }; apply(); },
    node(id) { return nodeEls.get(id); },
    focusNode(id) {
      const pos = g.node(id);
      if (!pos) return;
      const r = rect();
      const k = Math.max(view.k, 0.8);
      view = { k, x: r.width / 2 - pos.x * k, y: r.height / 2 - pos.y * k };
      apply();
    },
    markSelected(id) {
      for (const [nid, node] of nodeEls) node.classList.toggle("gv-selected", nid === id);
    },
  };
}
