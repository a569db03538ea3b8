// Step history reads shared by the jobs, job and compare pages (all through the public /v1 API).
//
//   const { downsampled, last } = await loadHistory(jobId, series, { maxPoints: 2000 });
//   const steps = await allSteps(jobId);                // every entry, paged by ?after=&limit=1000
//   const values = await sparkValues(job, 64);          // recent/downsampled losses for a sparkline
//
// `max_points` (a downsampled history keeping each bucket's min and max) is the API's; a server
// without it either answers 422 or ignores the parameter (then the page has no `downsampled`
// field): both fall back to plain paging, decimated here as it arrives.

import { api, ApiError } from "../api.js";

const PAGE = 1000;

function stepsPath(jobId, query) {
  return `v1/jobs/${encodeURIComponent(jobId)}/steps?${new URLSearchParams(query)}`;
}

// A downsampled page, or null when the API does not downsample.
export async function downsampledSteps(jobId, maxPoints, { signal } = {}) {
  try {
    const page = await api.get(stepsPath(jobId, { max_points: maxPoints }), { signal });
    return page && "downsampled" in page ? page : null;
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) return null;
    throw error;
  }
}

// Fill `series` (a StepSeries) with the job's history; returns { downsampled, last, pages }.
// `last` is the last step read: the live stream continues after it.
export async function loadHistory(jobId, series, { maxPoints = 2000, signal, maxPages = Infinity } = {}) {
  const page = await downsampledSteps(jobId, maxPoints, { signal });
  if (page) {
    series.addMany(page.steps || []);
    return { downsampled: Boolean(page.downsampled), last: series.lastStep, pages: 1 };
  }
  let after = 0, pages = 0;
  for (;;) {
    const next = await api.get(stepsPath(jobId, { after, limit: PAGE }), { signal });
    pages += 1;
    series.addMany(next.steps || []);
    const steps = next.steps || [];
    if (!steps.length || next.next_after == null || steps.length < PAGE || pages >= maxPages) break;
    after = next.next_after;
  }
  return { downsampled: series.decimations > 0, last: series.lastStep, pages };
}

// Every step entry, in order (the JSON download).
export async function allSteps(jobId, { signal } = {}) {
  const out = [];
  let after = 0;
  for (;;) {
    const page = await api.get(stepsPath(jobId, { after, limit: PAGE }), { signal });
    const steps = page.steps || [];
    out.push(...steps);
    if (!steps.length || page.next_after == null || steps.length < PAGE) break;
    after = page.next_after;
  }
  return out;
}

// The step history as CSV: the API's (Accept: text/csv) when it has it, else built from allSteps.
export async function stepsCsv(jobId) {
  const response = await api.request("GET", `v1/jobs/${encodeURIComponent(jobId)}/steps`,
    { headers: { Accept: "text/csv" } });
  const type = response.headers.get("content-type") || "";
  if (type.includes("text/csv")) return response.blob();
  const steps = await allSteps(jobId);
  return new Blob([toCsv(steps)], { type: "text/csv" });
}

export function toCsv(steps) {
  const params = [...new Set(steps.flatMap((s) => Object.keys(s.grad_norms || {})))].sort();
  const cell = (v) => (v === null || v === undefined ? "" : String(v));
  const lines = [["step", "time", "loss", "eval_loss", ...params.map((p) => `grad_norm:${p}`)].join(",")];
  for (const s of steps) {
    lines.push([s.step, cell(s.time), cell(s.loss), cell(s.eval_loss),
      ...params.map((p) => cell((s.grad_norms || {})[p]))].join(","));
  }
  return lines.join("\n") + "\n";
}

// Losses for a sparkline: the downsampled history, else the last `points` entries.
export async function sparkValues(job, points = 64, { signal } = {}) {
  const page = await downsampledSteps(job.id, points, { signal });
  let steps;
  if (page) {
    steps = page.steps || [];
  } else {
    const every = Number((job.settings || {}).report_every) || 1;
    const after = Math.max(0, (job.step || 0) - points * every);
    steps = (await api.get(stepsPath(job.id, { after, limit: points }), { signal })).steps || [];
  }
  return steps.map((s) => (typeof s.loss === "number" && Number.isFinite(s.loss) ? s.loss : null));
}
