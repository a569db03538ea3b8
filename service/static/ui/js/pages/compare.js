// The compare page (#/compare?ids=a,b,...): overlay jobs' loss curves aligned by step, and a
// table of their settings and final/best losses with the cells that differ highlighted.
//
// Jobs are picked from the recent ones (GET v1/jobs) or come from the URL (the jobs page's
// "Compare selected"). Each job's history is GET v1/jobs/{id}/steps?max_points=2000; the
// curves are joined on the step (uPlot.join), one colour per job (--series-N).

import { api, ApiError } from "../api.js";
import { fmt, h, problemBox, stateBadge } from "../dom.js";
import { StepSeries, ema, lineChart, smoothingControl, uPlot } from "../charts.js";
import { loadHistory } from "./jobs-data.js";

const MAX_POINTS = 2000;
const SMOOTHING_KEY = "chainrule.compare.smoothing";

export async function mount(root, ctx) {
  ctx.setTitle("Compare");
  const ids = [...new Set((ctx.query.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean))];
  let stopped = false;
  let chart = null;

  root.append(h("h1", {}, "Compare"));
  const problems = h("div", { class: "compare-problems" });

  // -- the picker ------------------------------------------------------------------------------
  const picked = new Set(ids);
  const pickList = h("ul", { class: "pick-list", id: "compare-pick" });
  const go = h("button", { type: "button", class: "primary", id: "compare-go",
    onclick: () => ctx.navigate(`#/compare?ids=${[...picked].map(encodeURIComponent).join(",")}`) }, "Compare");
  const pickCount = h("span", { class: "muted" });
  const updatePick = () => {
    go.disabled = picked.size < 1;
    pickCount.textContent = `${picked.size} selected`;
  };
  const picker = h("details", { class: "card picker", open: ids.length < 2 },
    h("summary", {}, "Pick jobs"),
    h("p", { class: "muted" }, "Recent jobs of this API key; or select jobs on the ", h("a", { href: "#/jobs" }, "Jobs"),
      " page and use \"Compare selected\"."),
    pickList, h("div", { class: "row" }, go, pickCount));
  root.append(picker, problems);

  try {
    const recent = await api.get("v1/jobs?limit=50");
    const listed = recent.jobs || [];
    const known = new Set(listed.map((j) => j.id));
    const extra = ids.filter((id) => !known.has(id)).map((id) => ({ id, state: null }));
    for (const job of [...extra, ...listed]) {
      const box = h("input", { type: "checkbox", id: `pick-${job.id}`, value: job.id, checked: picked.has(job.id),
        onchange: () => { if (box.checked) picked.add(job.id); else picked.delete(job.id); updatePick(); } });
      pickList.append(h("li", {}, box, h("label", { for: `pick-${job.id}` },
        h("span", { class: "mono" }, job.id.slice(0, 12)), " ", job.state ? stateBadge(job.state) : null,
        job.state ? h("span", { class: "muted" }, ` ${fmt.num(job.loss, 4)} · ${fmt.time(job.created)}`) : null)));
    }
    if (!listed.length && !extra.length) pickList.append(h("li", { class: "muted" }, "No jobs yet."));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) throw error;
    problems.append(problemBox(error));
  }
  updatePick();

  if (!ids.length) {
    root.append(h("p", { class: "muted compare-empty" }, "Pick two or more jobs to overlay their loss curves."));
    return () => { stopped = true; };
  }

  // -- the jobs and their histories ----------------------------------------------------------
  const loaded = await Promise.allSettled(ids.map(async (id) => {
    const job = await api.get(`v1/jobs/${encodeURIComponent(id)}`);
    const series = new StepSeries({ cap: MAX_POINTS * 2 });
    await loadHistory(id, series, { maxPoints: MAX_POINTS, maxPages: 20 });
    return { job, series };
  }));
  if (stopped) return undefined;
  const runs = [];
  loaded.forEach((result, i) => {
    if (result.status === "fulfilled") runs.push(result.value);
    else if (result.reason instanceof ApiError && result.reason.status === 404) {
      problems.append(h("div", { class: "banner", role: "alert" }, `Job ${ids[i]} was not found.`));
    } else if (result.reason instanceof ApiError && result.reason.status === 401) {
      throw result.reason;
    } else {
      problems.append(h("div", { class: "banner", role: "alert" }, `Job ${ids[i]}: ${result.reason.message || result.reason}`));
    }
  });
  if (!runs.length) return () => { stopped = true; };
  runs.forEach((run, i) => { run.color = `--series-${(i % 8) + 1}`; run.label = run.job.id.slice(0, 12); });

  // -- the chart ---------------------------------------------------------------------------
  const smoothing = smoothingControl({ id: "compare-smoothing", storageKey: SMOOTHING_KEY, initial: 0, onChange: () => draw() });
  const logBox = h("input", { type: "checkbox", id: "compare-log", onchange: () => { chart.setLog(logBox.checked); draw(); } });
  const chartEl = h("div", { class: "chart", id: "compare-chart", "data-series": String(runs.length),
    role: "figure", "aria-label": "Training loss of each job by step" });
  root.append(h("section", { class: "card chart-card", "aria-labelledby": "compare-loss-title" },
    h("div", { class: "row chart-tools" }, h("h2", { id: "compare-loss-title" }, "Training loss by step"),
      h("span", { class: "spacer" }),
      smoothing.label, smoothing.range, smoothing.out,
      h("label", { class: "check" }, logBox, " log scale")),
    h("ul", { class: "compare-legend" }, runs.map((run) => h("li", {},
      h("span", { class: "swatch", style: `background: var(${run.color})` }),
      h("a", { href: `#/jobs/${encodeURIComponent(run.job.id)}`, class: "mono" }, run.job.id)))),
    chartEl,
    h("p", { class: "muted chart-note" }, "Drag to zoom, double-click to reset; hover for each job's value at a step.")));

  chart = lineChart(chartEl, {
    yLabel: "loss",
    series: runs.map((run) => ({ label: run.label, color: run.color, width: 1.5 })),
  });
  function draw() {
    if (stopped) return;
    const tables = runs.map((run) => [run.series.xs, ema(run.series.loss, smoothing.value())]);
    const joined = tables.length === 1 ? tables[0] : uPlot.join(tables);
    chart.setData(joined);
    chartEl.dataset.series = String(joined.length - 1);
  }
  draw();
  ctx.onThemeChange(() => { chart.theme(); draw(); });

  // -- the table ---------------------------------------------------------------------------
  const rows = [
    { label: "state", get: (j) => j.state, render: (v) => stateBadge(v), compare: false },
    { label: "steps run", get: (j) => j.step, compare: false },
    { label: "final loss", get: (j) => j.loss, num: true, best: true },
    { label: "best loss", get: (j) => j.best_loss, num: true, best: true },
    { label: "last eval loss", get: (j, run) => lastEval(run), num: true, best: true, optional: true },
  ];
  const settingKeys = unionKeys(runs.map((r) => flatten(r.job.settings || {})));
  for (const key of settingKeys) rows.push({ label: key, get: (j) => flatten(j.settings || {})[key], setting: true });
  const dataKeys = unionKeys(runs.map((r) => flatten(dataSummary(r.job.data))));
  for (const key of dataKeys) rows.push({ label: `data.${key}`, get: (j) => flatten(dataSummary(j.data))[key], setting: true });
  rows.push({ label: "graph", get: (j) => j.graph_id, render: (v) => h("code", { title: v }, shortGraph(v)), setting: true });

  const onlyDiff = h("input", { type: "checkbox", id: "compare-only-diff", onchange: () => {
    for (const tr of tbody.querySelectorAll("tr")) tr.hidden = onlyDiff.checked && tr.dataset.differs !== "true" && tr.dataset.always !== "true";
  } });
  const tbody = h("tbody");
  for (const row of rows) {
    const values = runs.map((r) => row.get(r.job, r));
    if (row.optional && values.every((v) => v === null || v === undefined)) continue;
    const differs = row.compare !== false && new Set(values.map((v) => JSON.stringify(v ?? null))).size > 1;
    let bestIndex = -1;
    if (row.best) {
      values.forEach((v, i) => {
        if (typeof v === "number" && Number.isFinite(v) && (bestIndex < 0 || v < values[bestIndex])) bestIndex = i;
      });
    }
    tbody.append(h("tr", { "data-key": row.label, "data-differs": differs ? "true" : "false",
      "data-always": row.setting ? null : "true", class: differs && row.setting ? "differs" : null },
    h("th", { scope: "row" }, breakable(row.label)),
    values.map((v, i) => h("td", {
      class: [row.num ? "mono" : "", differs && row.setting ? "differs" : "", i === bestIndex && runs.length > 1 ? "best" : ""]
        .filter(Boolean).join(" ") || null,
      title: i === bestIndex && runs.length > 1 ? "lowest" : null,
    }, v === null || v === undefined ? "-" : row.render ? row.render(v) : row.num ? fmt.num(v) : cellText(v)))));
  }
  root.append(h("section", { class: "card compare-table-card", "aria-labelledby": "compare-table-title" },
    h("div", { class: "row" }, h("h2", { id: "compare-table-title" }, "Settings and results"),
      h("span", { class: "spacer" }), h("label", { class: "check" }, onlyDiff, " only differences")),
    h("p", { class: "muted legend-note" }, h("span", { class: "differs-sample" }, "highlighted"),
      ": a setting that differs between the jobs; ", h("strong", {}, "bold"), ": the lowest loss."),
    h("div", { class: "table-wrap" }, h("table", { class: "compare-table", id: "compare-table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Job"), runs.map((run) => h("th", { scope: "col" },
        h("span", { class: "swatch", style: `background: var(${run.color})` }),
        h("a", { href: `#/jobs/${encodeURIComponent(run.job.id)}`, class: "mono", title: run.job.id }, run.label))))),
      tbody))));

  return () => { stopped = true; if (chart) chart.destroy(); };
}

// {"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 60} -> {"optimizer.name": "sgd", "optimizer.lr": 0.5, "steps": 60}
function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out[prefix] = value;
  }
  return out;
}

// The data summary without per-input detail beyond dtype and shape.
function dataSummary(data) {
  if (!data || typeof data !== "object") return {};
  const out = { examples: data.examples, bytes: data.bytes };
  for (const [name, input] of Object.entries(data.inputs || {})) out[`inputs.${name}`] = `${input.dtype}${fmt.shape(input.shape)}`;
  return out;
}

// Keys in first-seen order, grouped by their first part ("optimizer.eps" stays with "optimizer.lr").
function unionKeys(objects) {
  const keys = [];
  for (const o of objects) for (const k of Object.keys(o)) if (!keys.includes(k)) keys.push(k);
  const groups = [...new Set(keys.map((k) => k.split(".")[0]))];
  return keys.map((k, i) => [groups.indexOf(k.split(".")[0]), i, k]).sort((a, b) => a[0] - b[0] || a[1] - b[1])
    .map(([, , k]) => k);
}

function cellText(v) {
  if (typeof v === "number") return Number.isFinite(v) ? String(Number(v.toPrecision(6))) : String(v);
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return JSON.stringify(v);
  return String(v);
}

function lastEval(run) {
  if (!run) return null;
  const values = run.series.evalLoss;
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

// "optimizer.weight_decay" with break opportunities after "." and "_" (narrow screens wrap there)
function breakable(label) {
  return label.split(/(?<=[._])/).flatMap((part, i) => (i ? [h("wbr"), part] : [part]));
}

function shortGraph(id) { return id && id.length > 20 ? `${id.slice(0, 19)}…` : id; }
