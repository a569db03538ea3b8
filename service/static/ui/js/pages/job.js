// The job page (#/jobs/<id>): live curves, the job's details, cancel and downloads.
//
// History: GET v1/jobs/{id}/steps?max_points=2000 (a downsampled history that keeps each bucket's
// min and max), then the live stream (SSE, api.stream) from the last step read. The in-memory
// series is bounded (StepSeries, cap 4000: re-decimated min/max per bucket) and the charts are
// redrawn at most 10 times a second, so a job reporting 10 steps/s stays smooth and a page left
// open for days does not grow. The loss chart's container carries data-points (points plotted)
// and data-received (entries received) for the browser tests; window.__chainrule_metrics holds
// performance.now() marks (job.mount, job.history, job.drawn).

import { api, ApiError } from "../api.js";
import { download, fmt, h, problemBox, stateBadge } from "../dom.js";
import { StepSeries, ema, lineChart, metric, smoothingControl, throttledFrame } from "../charts.js";
import { allSteps, loadHistory, stepsCsv } from "./jobs-data.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// the job resource's stop_reason, in words (runtime/stopping.py REASONS)
const STOP_REASONS = {
  steps: "it ran the steps asked for", epochs: "it ran the epochs asked for",
  patience: "the eval loss stopped improving (patience)", target_loss: "the loss reached target_loss",
};
const MAX_POINTS = 2000;
const CAP = 4000;
const POLL_MS = 2000;
const SMOOTHING_KEY = "chainrule.smoothing";

export async function mount(root, ctx) {
  const id = ctx.params.id;
  ctx.setTitle(`Job ${id}`);
  metric("job.mount");
  let job;
  try {
    job = await api.get(`v1/jobs/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      root.append(h("h1", {}, "Job not found"),
        h("div", { class: "banner job-not-found", role: "alert" },
          `There is no job ${id} that this API key can see. `, h("a", { href: "#/jobs" }, "Back to the jobs")));
      return undefined;
    }
    throw error;
  }

  let stopped = false;
  let stream = null;
  let pollTimer = null;
  const series = new StepSeries({ cap: CAP });
  let drawnMarked = false; // job.drawn: the first draw with points, once per mount
  let downsampled = false;
  const smoothing = smoothingControl({ id: "smoothing", storageKey: SMOOTHING_KEY, initial: 0.6, onChange: () => redraw() });

  // -- header and summary ----------------------------------------------------------------------
  const badge = h("span", { id: "job-state" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-job", onclick: onCancel }, "Cancel");
  const actionStatus = h("span", { class: "muted job-action-status", role: "status" });
  const stat = (label, key) => {
    const value = h("span", { class: "stat-value", "data-field": key }, "-");
    return [h("div", { class: "stat" }, h("span", { class: "stat-label" }, label), value), value];
  };
  const [progressBox, progressValue] = stat("Progress", "progress");
  const [lossBox, lossValue] = stat("Loss", "loss");
  const [bestBox, bestValue] = stat("Best loss", "best_loss");
  const [evalBox, evalValue] = stat("Eval loss", "eval_loss");
  const [durationBox, durationValue] = stat("Duration", "duration");
  const lossLabel = lossBox.querySelector(".stat-label");
  const bestAt = h("span", { class: "stat-note muted" });
  bestBox.append(bestAt);

  // -- charts --------------------------------------------------------------------------------
  const logBox = h("input", { type: "checkbox", id: "log-scale", onchange: () => {
    lossChart.setLog(logBox.checked);
    if (normsChart) normsChart.setLog(logBox.checked);
    redraw();
  } });
  const rawBox = h("input", { type: "checkbox", id: "show-raw", checked: true,
    onchange: () => lossChart.setSeriesShown(0, rawBox.checked) });
  const note = h("span", { class: "muted chart-note", id: "chart-note" });
  const lossEl = h("div", { class: "chart", id: "loss-chart", "data-points": "0", "data-received": "0",
    role: "figure", "aria-label": "Training loss, smoothed loss and eval loss by step" });
  const normsEl = h("div", { class: "chart", id: "norms-chart", "data-points": "0", role: "figure",
    "aria-label": "Gradient norm of each parameter by step" });
  const normsEmpty = h("p", { class: "muted" }, "No gradient norms reported (yet).");
  // the step entries' metrics: scores in [0, 1] (accuracy, eval_accuracy, a graph's own) on one
  // chart, the learning rate on its own when a schedule moves it (grad_norm: the table's CSV/JSON)
  const metricsEl = h("div", { class: "chart", id: "metrics-chart", "data-points": "0", role: "figure",
    "aria-label": "Metrics (accuracy) by step" });
  const metricsCard = h("div", { id: "metrics-card", hidden: true },
    h("h2", { id: "metrics-title" }, "Metrics"), metricsEl);
  const lrEl = h("div", { class: "chart", id: "lr-chart", "data-points": "0", role: "figure",
    "aria-label": "Learning rate by step" });
  const lrCard = h("div", { id: "lr-card", hidden: true }, h("h2", { id: "lr-title" }, "Learning rate"), lrEl);

  const detailsDl = h("dl", { class: "kv", id: "job-details" });
  const settingsDl = h("div", { id: "job-settings" });
  const dataDl = h("div", { id: "job-data" });
  const errorBox = h("div", { id: "job-error" });
  const graphLink = h("a", { id: "graph-link", href: graphHref(job.graph_id, id) },
    "Graph");

  const resultBtn = h("button", { type: "button", id: "download-result", onclick: () => act(downloadResult) }, "Result (JSON)");
  const csvBtn = h("button", { type: "button", id: "download-csv", onclick: () => act(downloadCsv) }, "Steps (CSV)");
  const jsonBtn = h("button", { type: "button", id: "download-json", onclick: () => act(downloadJson) }, "Steps (JSON)");

  root.append(
    h("div", { class: "job-head row" },
      h("h1", {}, "Job ", h("code", { class: "job-id" }, id)), badge,
      h("span", { class: "spacer" }), graphLink, cancel),
    actionStatus,
    errorBox,
    h("div", { class: "job-stats", "aria-live": "off" }, progressBox, lossBox, bestBox, evalBox, durationBox),
    h("section", { class: "card chart-card", "aria-labelledby": "loss-title", "aria-live": "off" },
      h("div", { class: "row chart-tools" },
        h("h2", { id: "loss-title" }, "Loss"), h("span", { class: "spacer" }),
        h("label", { class: "check" }, rawBox, " raw"),
        smoothing.label, smoothing.range, smoothing.out,
        h("label", { class: "check" }, logBox, " log scale")),
      lossEl,
      h("h2", { id: "norms-title" }, "Gradient norms"),
      normsEmpty, normsEl,
      metricsCard, lrCard,
      note),
    h("div", { class: "job-panels" },
      h("section", { class: "card" }, h("h2", {}, "Details"), detailsDl),
      h("section", { class: "card" }, h("h2", {}, "Settings"), settingsDl),
      h("section", { class: "card" }, h("h2", {}, "Data"), dataDl),
      h("section", { class: "card downloads" }, h("h2", {}, "Downloads"),
        h("div", { class: "row" }, resultBtn, csvBtn, jsonBtn))),
  );

  const lossChart = lineChart(lossEl, {
    yLabel: "loss",
    series: [
      { label: "loss", color: "--series-1", width: 1 },
      { label: "smoothed", color: "--series-2", width: 2 },
      { label: "eval loss", color: "--series-3", width: 1.5, points: true },
    ],
    onDraw: (u) => {
      if (!drawnMarked && u.data[0].length) { drawnMarked = true; metric("job.drawn"); }
    },
  });
  let normsChart = null;
  let normNames = [];
  let metricsChart = null;
  let metricNames = [];
  const lrChart = lineChart(lrEl, { yLabel: "lr", height: 160, series: [{ label: "lr", color: "--series-4", width: 1.5 }] });

  function buildNorms(names) {
    if (normsChart) normsChart.destroy();
    normNames = names;
    normsChart = lineChart(normsEl, {
      yLabel: "‖grad‖", height: 220, log: logBox.checked,
      series: names.map((name, i) => ({ label: name, color: `--series-${(i % 8) + 1}`, width: 1.25 })),
    });
  }

  function draw() {
    if (stopped) return;
    const xs = series.xs.slice();
    const loss = series.loss.slice();
    lossChart.setData([xs, loss, ema(loss, smoothing.value()), series.evalLoss.slice()]);
    lossEl.dataset.received = String(series.received);
    lossEl.dataset.lastStep = String(series.lastStep);
    lossEl.dataset.maxLoss = String(loss.reduce((m, v) => (v !== null && v > m ? v : m), -Infinity));
    const names = [...series.norms.keys()];
    if (names.length) {
      if (names.join("\n") !== normNames.join("\n")) buildNorms(names);
      normsChart.setData([xs, ...names.map((n) => series.norms.get(n).slice())]);
    }
    normsEmpty.hidden = names.length > 0;
    normsEl.hidden = names.length === 0;
    const scores = [...series.metrics.keys()].filter((n) => n !== "lr" && n !== "grad_norm");
    if (scores.length) {
      if (scores.join("\n") !== metricNames.join("\n")) {
        if (metricsChart) metricsChart.destroy();
        metricNames = scores;
        metricsChart = lineChart(metricsEl, {
          yLabel: "metric", height: 200,
          series: scores.map((name, i) => ({ label: name, color: `--series-${(i % 8) + 1}`, width: 1.5,
                                              points: name.startsWith("eval_") })),
        });
      }
      metricsChart.setData([xs, ...scores.map((n) => series.metrics.get(n).slice())]);
    }
    metricsCard.hidden = scores.length === 0;
    const lr = series.metrics.get("lr") || [];
    const rates = lr.filter((v) => v !== null);
    const moves = rates.length > 1 && rates.some((v) => v !== rates[0]);
    if (moves) lrChart.setData([xs, lr.slice()]);
    lrCard.hidden = !moves;
    note.textContent = `${series.length} points plotted of ${series.lastStep} steps`
      + `${downsampled || series.decimations ? " (downsampled: each bucket's min and max kept)" : ""}.`
      + " Drag to zoom, double-click to reset; hover for values.";
    updateStats();
  }
  const redraw = throttledFrame(draw, 100);

  // -- the job's fields -------------------------------------------------------------------------
  function updateStats() {
    progressValue.textContent = fmt.progress(job);
    const terminal = TERMINAL.has(job.state);
    const loss = terminal || series.lastLoss === null ? job.loss : series.lastLoss;
    lossLabel.textContent = terminal ? "Final loss" : "Loss";
    lossValue.textContent = fmt.num(loss);
    lossValue.dataset.value = loss === null || loss === undefined ? "" : String(loss);
    bestValue.textContent = fmt.num(job.best_loss);
    bestValue.title = job.best_loss_step != null ? `at step ${job.best_loss_step}` : "";
    bestAt.textContent = job.best_loss_step != null ? ` at step ${job.best_loss_step}` : "";
    const evals = series.evalLoss.filter((v) => v !== null);
    evalValue.textContent = evals.length ? fmt.num(evals[evals.length - 1]) : "-";
    durationValue.textContent = fmt.duration(job.started, job.finished);
  }

  function showJob(next) {
    job = { ...job, ...next };
    badge.replaceChildren(stateBadge(job.state));
    const terminal = TERMINAL.has(job.state);
    cancel.disabled = terminal || job.state === "cancelling";
    cancel.title = terminal ? `The job has finished (${job.state})` : "";
    resultBtn.disabled = job.state !== "succeeded";
    resultBtn.title = job.state === "succeeded" ? "" : "Only a succeeded job has a result";
    detailsDl.replaceChildren(...kv([
      ["State", stateBadge(job.state)], ["Epochs", job.epoch ?? "-"], ["Attempts", job.attempts], ["Worker", job.worker || "-"],
      ["Stopped because", STOP_REASONS[job.stop_reason] || "-"],
      ["Created", fmt.time(job.created)], ["Started", fmt.time(job.started)], ["Finished", fmt.time(job.finished)],
      ["Graph", h("a", { href: graphLink.getAttribute("href"), class: "mono", title: job.graph_id },
        job.graph_id.length > 23 ? `${job.graph_id.slice(0, 22)}…` : job.graph_id)],
    ]));
    settingsDl.replaceChildren(job.settings ? defList(job.settings) : h("p", { class: "muted" }, "Not reported by this API."));
    dataDl.replaceChildren(job.data ? defList(job.data) : h("p", { class: "muted" }, "Not reported by this API."),
      ...(job.eval_data ? [h("h3", {}, "Eval data"), defList(job.eval_data)] : []));
    if (job.error) {
      const e = job.error;
      errorBox.replaceChildren(h("div", { class: "banner", role: "alert" },
        h("strong", {}, e.type), ": ", e.message,
        e.node ? [" (node ", h("a", { href: graphHref(job.graph_id, id, e.node), class: "mono error-node" }, e.node), ")"] : null));
    } else {
      errorBox.replaceChildren();
    }
    updateStats();
    if (terminal && pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  async function poll() {
    if (stopped || document.visibilityState !== "visible") return;
    try { showJob(await api.get(`v1/jobs/${encodeURIComponent(id)}`)); } catch { /* the next poll tries again */ }
  }

  // -- actions -------------------------------------------------------------------------------
  async function act(fn) {
    actionStatus.replaceChildren();
    try { await fn(); } catch (error) {
      if (stopped) return;
      actionStatus.replaceChildren(error instanceof ApiError ? problemBox(error) : String(error.message || error));
    }
  }

  async function onCancel() {
    cancel.disabled = true;
    await act(async () => {
      showJob(await api.post(`v1/jobs/${encodeURIComponent(id)}/cancel`));
      actionStatus.textContent = job.state === "cancelled" ? "Cancelled." : "Cancelling: the worker stops at its next step.";
    });
    if (!TERMINAL.has(job.state) && job.state !== "cancelling") cancel.disabled = false;
    if (!pollTimer && !TERMINAL.has(job.state)) pollTimer = setInterval(poll, POLL_MS);
  }

  async function downloadResult() {
    const result = await api.get(`v1/jobs/${encodeURIComponent(id)}/result`);
    download(`${id}-result.json`, JSON.stringify(result, null, 2), "application/json");
  }
  async function downloadCsv() { download(`${id}-steps.csv`, await stepsCsv(id), "text/csv"); }
  async function downloadJson() {
    download(`${id}-steps.json`, JSON.stringify(await allSteps(id)), "application/json");
  }

  // -- start ---------------------------------------------------------------------------------
  showJob(job);
  ctx.onThemeChange(() => {
    lossChart.theme(); lrChart.theme();
    if (normsChart) normsChart.theme();
    if (metricsChart) metricsChart.theme();
    draw();
  });
  pollTimer = TERMINAL.has(job.state) ? null : setInterval(poll, POLL_MS);
  const onVisible = () => { if (document.visibilityState === "visible") poll(); };
  document.addEventListener("visibilitychange", onVisible);

  (async () => {
    try {
      const loaded = await loadHistory(id, series, { maxPoints: MAX_POINTS });
      if (stopped) return;
      downsampled = loaded.downsampled;
      metric("job.history");
      metric("job.historyPoints", series.length);
      draw();
      stream = api.stream(id, {
        after: loaded.last,
        onStep: (entry) => { series.add(entry); redraw(); },
        onEnd: (final) => { if (!stopped) { showJob(final); redraw(); } },
        onError: (error) => { if (!stopped) actionStatus.replaceChildren(problemBox(error)); },
      });
    } catch (error) {
      if (!stopped && !(error.name === "AbortError")) actionStatus.replaceChildren(
        error instanceof ApiError ? problemBox(error) : `The step history could not be read: ${error.message || error}`);
    }
  })();

  return () => {
    stopped = true;
    redraw.cancel();
    if (stream) stream.close();
    if (pollTimer) clearInterval(pollTimer);
    document.removeEventListener("visibilitychange", onVisible);
    lossChart.destroy();
    lrChart.destroy();
    if (normsChart) normsChart.destroy();
    if (metricsChart) metricsChart.destroy();
  };
}

// #/graphs/<graph id>?job=<id>[&node=<node>] (a graph id's "sha256:" stays readable)
export function graphHref(graphId, jobId, node) {
  const enc = (v) => encodeURIComponent(v).replace(/%3A/gi, ":");
  return `#/graphs/${enc(graphId)}?job=${enc(jobId)}${node ? `&node=${enc(node)}` : ""}`;
}

function kv(pairs) {
  return pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined ? "-" : v)]);
}

// Any JSON object as a definition list: nested objects flatten to dotted keys ("optimizer.lr"),
// a tensor summary ({dtype, shape, ...}) reads "float64 [60] · per example".
export function defList(value) {
  const rows = [];
  const walk = (v, key) => {
    if (v && typeof v === "object" && !Array.isArray(v) && !isTensorSummary(v)) {
      const keys = Object.keys(v);
      if (!keys.length && key) rows.push([key, h("span", { class: "muted" }, "(none)")]);
      for (const k of keys) walk(v[k], key ? `${key}.${k}` : k);
    } else {
      rows.push([key, leaf(v)]);
    }
  };
  walk(value, "");
  if (!rows.length) return h("span", { class: "muted" }, "(none)");
  return h("dl", { class: "kv" }, kv(rows));
}

function isTensorSummary(v) { return typeof v.dtype === "string" && Array.isArray(v.shape); }

function leaf(v) {
  if (v === null || v === undefined) return h("span", { class: "muted" }, "-");
  if (Array.isArray(v)) {
    const text = JSON.stringify(v);
    return h("code", {}, text.length > 200 ? text.slice(0, 200) + "…" : text);
  }
  if (typeof v === "object") {
    const extra = Object.entries(v).filter(([k]) => k !== "dtype" && k !== "shape")
      .map(([k, x]) => (x === true ? k.replace(/_/g, " ") : x === false ? null : `${k} ${x}`)).filter(Boolean);
    return h("span", { class: "mono" }, `${v.dtype} ${fmt.shape(v.shape)}`, extra.length ? h("span", { class: "muted" }, ` · ${extra.join(", ")}`) : null);
  }
  if (typeof v === "number") return h("span", { class: "mono" }, Number.isFinite(v) ? String(Number(v.toPrecision(6))) : String(v));
  if (typeof v === "boolean") return h("span", {}, v ? "yes" : "no");
  return h("span", {}, String(v));
}
