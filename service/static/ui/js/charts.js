// Charts for the job and compare pages (uPlot) and the jobs page's sparklines (SVG).
//
//   const history = new StepSeries({ cap: 4000 });   // bounded, columnar step history
//   history.add(entry) / history.addMany(entries)     // entries as GET v1/jobs/{id}/steps returns them
//   const chart = lineChart(el, { series: [{ label, color: "--series-1" }, ...], height: 280 });
//   chart.setData([xs, ys1, ys2, ...]); chart.setLog(true); chart.theme(); chart.destroy();
//   sparkline(values) -> <svg>;  ema(values, smoothing) -> smoothed copy
//
// Memory stays bounded however long a page is open: when a StepSeries holds more than `cap`
// points it is re-decimated in place, keeping each bucket's minimum and maximum of the loss
// and eval loss (a spike is never hidden), plus the first and last points.

import uPlot from "../../vendor/uplot/dist/uPlot.esm.js";
import { cssVar, fmt, h } from "./dom.js";

export { uPlot };

// A number for plotting: null for absent or non-finite ("NaN", "Infinity" strings included).
export function plotNum(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

export class StepSeries {
  constructor({ cap = 4000 } = {}) {
    this.cap = cap;
    this.xs = [];
    this.loss = [];
    this.evalLoss = [];
    this.norms = new Map(); // parameter -> values (aligned with xs)
    this.metrics = new Map(); // metric (lr, accuracy, eval_accuracy, ...) -> values (aligned with xs)
    this.received = 0;      // entries ever added (not decimated away)
    this.lastStep = 0;
    this.lastLoss = null;
    this.decimations = 0;
  }

  get length() { return this.xs.length; }

  add(entry) {
    if (!entry || typeof entry.step !== "number") return;
    if (this.xs.length && entry.step <= this.xs[this.xs.length - 1]) return; // already have it
    const n = this.xs.length;
    this.xs.push(entry.step);
    this.loss.push(plotNum(entry.loss));
    this.evalLoss.push(plotNum(entry.eval_loss));
    const norms = entry.grad_norms || {};
    for (const name of Object.keys(norms)) {
      if (!this.norms.has(name)) this.norms.set(name, new Array(n).fill(null));
    }
    for (const [name, values] of this.norms) values.push(plotNum(norms[name]));
    const metrics = entry.metrics || {};
    for (const name of Object.keys(metrics)) {
      if (!this.metrics.has(name)) this.metrics.set(name, new Array(n).fill(null));
    }
    for (const [name, values] of this.metrics) values.push(plotNum(metrics[name]));
    this.received += 1;
    this.lastStep = entry.step;
    if (entry.loss !== undefined) this.lastLoss = entry.loss;
    if (this.xs.length > this.cap) this.decimate();
  }

  addMany(entries) { for (const e of entries) this.add(e); }

  hasEval() { return this.evalLoss.some((v) => v !== null); }

  // Keep, per bucket, the indexes of the loss's and eval loss's min and max (and the first and
  // last point overall), so the result has at most about half the cap.
  decimate(target = Math.floor(this.cap / 2)) {
    const n = this.xs.length;
    if (n <= target) return;
    let buckets = Math.max(1, Math.floor(target / 4));
    let keep;
    for (;;) {
      keep = pickMinMax(n, buckets, [this.loss, this.evalLoss]);
      if (keep.length <= target || buckets <= 1) break;
      buckets = Math.max(1, Math.floor(buckets / 2));
    }
    const take = (a) => keep.map((i) => a[i]);
    this.xs = take(this.xs);
    this.loss = take(this.loss);
    this.evalLoss = take(this.evalLoss);
    for (const [name, values] of this.norms) this.norms.set(name, take(values));
    for (const [name, values] of this.metrics) this.metrics.set(name, take(values));
    this.decimations += 1;
  }
}

// Indexes (ascending) of each bucket's min and max in every column, plus 0 and n-1.
function pickMinMax(n, buckets, columns) {
  const set = new Set([0, n - 1]);
  const size = n / buckets;
  for (let b = 0; b < buckets; b++) {
    const lo = Math.floor(b * size), hi = Math.min(n, Math.floor((b + 1) * size));
    for (const col of columns) {
      let iMin = -1, iMax = -1;
      for (let i = lo; i < hi; i++) {
        const v = col[i];
        if (v === null) continue;
        if (iMin < 0 || v < col[iMin]) iMin = i;
        if (iMax < 0 || v > col[iMax]) iMax = i;
      }
      if (iMin >= 0) { set.add(iMin); set.add(iMax); }
    }
  }
  return [...set].sort((a, b) => a - b);
}

// Exponential moving average, debiased (as TensorBoard's smoothing): smoothing in [0, 1).
export function ema(values, smoothing) {
  const out = new Array(values.length);
  if (!(smoothing > 0)) { for (let i = 0; i < values.length; i++) out[i] = values[i]; return out; }
  let last = 0, weight = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null) { out[i] = null; continue; }
    last = last * smoothing + (1 - smoothing) * v;
    weight = weight * smoothing + (1 - smoothing);
    out[i] = last / weight;
  }
  return out;
}

// A small inline SVG line of `values` (nulls skipped); "-" when there is nothing to draw.
export function sparkline(values, { width = 96, height = 24, label = "loss" } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const finite = values.filter((v) => v !== null);
  svg.setAttribute("aria-label", finite.length
    ? `${label}: ${fmt.num(finite[0], 3)} to ${fmt.num(finite[finite.length - 1], 3)}` : `no ${label} yet`);
  if (finite.length < 1) return svg;
  let min = Math.min(...finite), max = Math.max(...finite);
  if (max === min) { max += 1; min -= 1; }
  const pad = 2;
  const n = values.length;
  const points = [];
  values.forEach((v, i) => {
    if (v === null) return;
    const x = n === 1 ? width / 2 : pad + (i / (n - 1)) * (width - 2 * pad);
    const y = pad + (1 - (v - min) / (max - min)) * (height - 2 * pad);
    points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "currentColor");
  line.setAttribute("stroke-width", "1.5");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(line);
  return svg;
}

// A uPlot line chart that follows the theme, resizes with its container, keeps a user's zoom
// while data streams in (drag to zoom, double-click to reset) and can switch to a log y scale.
//   series: [{ label, color: "--series-1" | "#hex", width, dash, points }]
export function lineChart(container, { series, height = 280, log = false, xLabel = "step", yLabel = "",
                                        valueFormat = (v) => fmt.num(v, 5), onDraw = null } = {}) {
  let u = null;
  let data = [[], ...series.map(() => [])];
  let isLog = log;
  let drawn = 0;

  const colour = (c) => (c && c.startsWith("--") ? cssVar(c) : c);
  const chartHeight = () => (window.innerWidth < 640 ? Math.min(height, 220) : height);

  function build() {
    const fg = cssVar("--fg") || "#000";
    const grid = cssVar("--border") || "#ccc";
    const axis = { stroke: cssVar("--muted") || fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts = {
      width: Math.max(200, container.clientWidth || 600),
      height: chartHeight(),
      scales: { x: { time: false }, y: isLog ? { distr: 3 } : { auto: true } },
      cursor: { drag: { x: true, y: false, setScale: true } },
      legend: { live: true },
      axes: [{ ...axis, label: xLabel }, { ...axis, label: yLabel, size: 60,
        values: (self, ticks) => ticks.map((t) => fmt.num(t, 3)) }],
      series: [
        { label: xLabel, value: (self, v) => (v == null ? "-" : String(v)) },
        ...series.map((s) => ({
          label: s.label, stroke: colour(s.color), width: s.width || 1.5, dash: s.dash,
          points: { show: s.points ?? false, size: 5 }, spanGaps: true,
          value: (self, v) => (v == null ? "-" : valueFormat(v)),
        })),
      ],
      hooks: {
        // not hovering: the legend reads the latest values instead of "-"
        setLegend: [(self) => {
          const n = self.data[0] ? self.data[0].length : 0;
          if (self.legend.idx == null && n) self.setLegend({ idx: n - 1 }, false);
        }],
        setScale: [(self, key) => {
          if (key !== "x") return;
          container.dataset.xMin = String(self.scales.x.min);
          container.dataset.xMax = String(self.scales.x.max);
        }],
        draw: [(self) => {
          drawn += 1;
          container.dataset.draws = String(drawn);
          if (onDraw) onDraw(self);
        }],
      },
    };
    if (u) u.destroy();
    u = new uPlot(opts, shown(), container);
  }

  // Log scale: non-positive values have no place on it.
  function shown() {
    if (!isLog) return data;
    return [data[0], ...data.slice(1).map((col) => col.map((v) => (v !== null && v > 0 ? v : null)))];
  }

  function zoomed() {
    if (!u) return false;
    const xs = u.data[0];
    if (!xs || xs.length < 2) return false;
    const { min, max } = u.scales.x;
    return (min != null && min > xs[0]) || (max != null && max < xs[xs.length - 1]);
  }

  const observer = new ResizeObserver(() => {
    if (!u) return;
    const width = Math.max(200, container.clientWidth);
    if (width !== u.width || chartHeight() !== u.height) u.setSize({ width, height: chartHeight() });
  });
  observer.observe(container);
  build();

  return {
    get plot() { return u; },
    setData(next) {
      data = next;
      container.dataset.points = String(next[0].length);
      u.setData(shown(), !zoomed());
      if (u.cursor.idx == null && next[0].length) u.setLegend({ idx: next[0].length - 1 }, false);
    },
    setSeriesShown(index, show) { if (u) u.setSeries(index + 1, { show }); },
    setLog(on) { isLog = on; build(); },
    theme() { build(); },
    destroy() { observer.disconnect(); if (u) u.destroy(); u = null; },
  };
}

// Calls fn at most once per `interval` ms, in an animation frame (coalescing bursts).
export function throttledFrame(fn, interval = 100) {
  let pending = false, last = 0, timer = null, frame = null;
  const run = () => { frame = null; pending = false; last = performance.now(); fn(); };
  const schedule = () => {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, interval - (performance.now() - last));
    timer = setTimeout(() => { timer = null; frame = requestAnimationFrame(run); }, wait);
  };
  schedule.cancel = () => { if (timer) clearTimeout(timer); if (frame) cancelAnimationFrame(frame); pending = false; };
  return schedule;
}

// The page's performance marks, for the browser tests' measurements.
export function metric(name, value = performance.now()) {
  const m = (window.__chainrule_metrics = window.__chainrule_metrics || {});
  m[name] = value;
  return value;
}

// A smoothing (EMA weight) slider remembered under `storageKey`: { value(), label, range, out }.
// onChange() runs after each move; the pages draw with ema(values, control.value()).
export function smoothingControl({ id, storageKey, initial, onChange }) {
  let smoothing = Number(localStorage.getItem(storageKey) ?? initial);
  if (!(smoothing >= 0 && smoothing < 1)) smoothing = initial;
  const out = h("output", { for: id, class: "mono" }, smoothing.toFixed(2));
  const range = h("input", { type: "range", id, min: "0", max: "0.99", step: "0.01", value: String(smoothing),
    "aria-label": "Smoothing (EMA weight)", oninput: () => {
      smoothing = Number(range.value);
      out.textContent = smoothing.toFixed(2);
      localStorage.setItem(storageKey, String(smoothing));
      onChange();
    } });
  return { value: () => smoothing, label: h("label", { for: id }, "Smoothing"), range, out };
}
