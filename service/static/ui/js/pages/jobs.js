// The jobs page (#/jobs[?state=running]): the tenant's jobs, newest first, live.
//
// One page of 50 at a time from GET v1/jobs (cursor paging: "Older" follows next_cursor, the
// cursors seen are kept for "Newer"), so it stays fast however many jobs there are. The page on
// screen is fetched again every 2 s while the tab is visible; rows are updated in place (focus
// and selection survive), and a job's sparkline (GET v1/jobs/{id}/steps?max_points=64) is
// fetched again only when its step changed. Keys: "n" older page, "p" newer page.

import { api } from "../api.js";
import { fmt, h, problemBox, stateBadge } from "../dom.js";
import { metric, sparkline } from "../charts.js";
import { sparkValues } from "./jobs-data.js";

const LIMIT = 50;
const POLL_MS = 2000;
const STATES = ["queued", "running", "succeeded", "failed", "cancelling", "cancelled"];
const SPARK_CONCURRENCY = 4;
const SPARK_REFRESH_MS = 6000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export async function mount(root, ctx) {
  ctx.setTitle("Jobs");
  metric("jobs.mount");
  const state = STATES.includes(ctx.query.get("state")) ? ctx.query.get("state") : "";
  const cursors = [null]; // cursors[i]: the cursor of page i (null: the newest page)
  let index = 0;
  let lastPage = null;
  let stopped = false;
  let inFlight = null;
  const selected = new Set();
  const rows = new Map();   // job id -> { tr, cells, job }
  const sparks = new Map(); // job id -> { step, svg, pending }
  const sparkQueue = [];
  let sparkActive = 0;

  // -- the page's elements -------------------------------------------------------------------
  const filter = h("select", { id: "jobs-state", onchange: () => {
    ctx.navigate(filter.value ? `#/jobs?state=${encodeURIComponent(filter.value)}` : "#/jobs");
  } }, h("option", { value: "" }, "all states"), STATES.map((s) => h("option", { value: s, selected: s === state }, s)));
  const compare = h("button", { type: "button", class: "primary", id: "compare-selected", disabled: true,
    onclick: () => ctx.navigate(`#/compare?ids=${[...selected].map(encodeURIComponent).join(",")}`) },
  "Compare selected");
  const newer = h("button", { type: "button", id: "jobs-newer", "aria-keyshortcuts": "p",
    onclick: () => go(index - 1) }, "← Newer");
  const older = h("button", { type: "button", id: "jobs-older", "aria-keyshortcuts": "n",
    onclick: () => go(index + 1) }, "Older →");
  const pageLabel = h("span", { class: "muted jobs-page-label" });
  const status = h("p", { class: "muted jobs-status", "aria-live": "off" });
  const problem = h("div", { class: "jobs-problem" });
  const tbody = h("tbody");
  const empty = h("p", { class: "jobs-empty muted", hidden: true });
  const table = h("table", { class: "jobs-table" },
    h("caption", { class: "visually-hidden" }, "Jobs, newest first"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "col-select" }, h("span", { class: "visually-hidden" }, "Select")),
      h("th", { scope: "col" }, "State"),
      h("th", { scope: "col" }, "Job"),
      h("th", { scope: "col", class: "col-progress" }, "Progress"),
      h("th", { scope: "col", class: "num" }, "Loss"),
      h("th", { scope: "col", class: "num hide-narrow" }, "Best"),
      h("th", { scope: "col", class: "col-spark" }, "Loss curve"),
      h("th", { scope: "col", class: "hide-narrow" }, "Created"),
      h("th", { scope: "col", class: "num hide-narrow" }, "Duration"))),
    tbody);

  root.append(
    h("div", { class: "jobs-head row" }, h("h1", {}, "Jobs"), h("span", { class: "spacer" }),
      h("label", { for: "jobs-state", class: "muted" }, "State"), filter, compare),
    problem,
    h("div", { class: "table-wrap", "aria-live": "off" }, table), // polled: not read out at every update
    empty,
    h("div", { class: "row jobs-pager" }, newer, pageLabel, older,
      h("span", { class: "muted jobs-keys hide-narrow" }, "keys: ", h("kbd", {}, "p"), " newer, ", h("kbd", {}, "n"), " older"),
      h("span", { class: "spacer" }), status),
  );

  // -- data ----------------------------------------------------------------------------------
  function listPath() {
    const q = new URLSearchParams({ limit: String(LIMIT) });
    if (state) q.set("state", state);
    if (cursors[index]) q.set("cursor", cursors[index]);
    return `v1/jobs?${q}`;
  }

  async function refresh() {
    if (stopped) return;
    if (inFlight) return inFlight;
    inFlight = (async () => {
      try {
        const page = await api.get(listPath());
        if (stopped) return;
        lastPage = page;
        problem.replaceChildren();
        render(page.jobs || []);
        metric("jobs.rendered");
        status.textContent = `Updated ${fmt.time(new Date().toISOString()).slice(11)}`;
      } catch (error) {
        if (stopped) return;
        problem.replaceChildren(problemBox(error));
      } finally {
        inFlight = null;
      }
    })();
    return inFlight;
  }

  async function go(next) {
    if (next < 0 || stopped) return;
    if (next > index) {
      if (!lastPage || !lastPage.next_cursor) return;
      cursors[next] = lastPage.next_cursor;
      cursors.length = next + 1;
    }
    index = next;
    lastPage = null;
    if (inFlight) await inFlight;
    await refresh();
    if (document.activeElement && document.activeElement.disabled) (older.disabled ? newer : older).focus();
  }

  // -- rendering -----------------------------------------------------------------------------
  function render(jobs) {
    const ids = new Set(jobs.map((j) => j.id));
    for (const [id, row] of rows) if (!ids.has(id)) { row.tr.remove(); rows.delete(id); }
    let previous = null;
    for (const job of jobs) {
      let row = rows.get(job.id);
      if (!row) { row = makeRow(job); rows.set(job.id, row); }
      updateRow(row, job);
      const want = previous ? previous.nextSibling : tbody.firstChild;
      if (want !== row.tr) tbody.insertBefore(row.tr, want);
      previous = row.tr;
    }
    empty.hidden = jobs.length > 0;
    empty.replaceChildren(...(index > 0 ? ["No older jobs."]
      : [state ? `No ${state} jobs. ` : "No jobs yet. ", h("a", { href: "#/submit" }, "Submit one")]));
    newer.disabled = index === 0;
    older.disabled = !(lastPage && lastPage.next_cursor);
    pageLabel.textContent = `Page ${index + 1}`;
    pageLabel.dataset.page = String(index + 1);
    updateCompare();
  }

  function makeRow(job) {
    const box = h("input", { type: "checkbox", class: "job-select", "aria-label": `Select ${job.id}`,
      checked: selected.has(job.id),
      onchange: () => { if (box.checked) selected.add(job.id); else selected.delete(job.id); updateCompare(); } });
    const cells = {
      state: h("td", { class: "col-state" }),
      id: h("td", { class: "col-id" }, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono",
        title: job.id }, job.id.startsWith("job_") ? h("span", { class: "id-prefix" }, "job_") : null, shortId(job.id))),
      progress: h("td", { class: "col-progress" }),
      loss: h("td", { class: "num col-loss" }),
      best: h("td", { class: "num col-best hide-narrow" }),
      spark: h("td", { class: "col-spark" }),
      created: h("td", { class: "col-created hide-narrow" }),
      duration: h("td", { class: "num col-duration hide-narrow" }),
    };
    const tr = h("tr", { "data-job": job.id }, h("td", { class: "col-select" }, box), Object.values(cells));
    return { tr, cells, job: null, box };
  }

  function updateRow(row, job) {
    const old = row.job;
    const c = row.cells;
    if (!old || old.state !== job.state) {
      c.state.replaceChildren(stateBadge(job.state));
      row.tr.dataset.state = job.state;
    }
    if (!old || old.step !== job.step || old.total_steps !== job.total_steps) {
      const pct = job.total_steps ? Math.min(100, (100 * job.step) / job.total_steps) : null;
      c.progress.replaceChildren(
        h("span", { class: "progress-text" }, fmt.progress(job)),
        pct === null ? null : h("span", { class: "bar", role: "progressbar", "aria-valuemin": "0",
          "aria-valuemax": String(job.total_steps), "aria-valuenow": String(job.step),
          "aria-label": `${job.id} progress` }, h("span", { class: "bar-fill", style: `width:${pct.toFixed(1)}%` })));
    }
    c.loss.textContent = fmt.num(job.loss, 4);
    c.loss.title = job.loss === null || job.loss === undefined ? "" : String(job.loss);
    c.best.textContent = fmt.num(job.best_loss, 4);
    c.created.textContent = fmt.time(job.created);
    c.duration.textContent = fmt.duration(job.started, job.finished);
    row.job = job;
    row.box.checked = selected.has(job.id);
    wantSpark(job, c.spark);
  }

  // -- sparklines: fetched when the job's step changed, a few at a time -----------------------
  function wantSpark(job, cell) {
    const have = sparks.get(job.id);
    if (have && have.svg && cell.firstChild !== have.svg) cell.replaceChildren(have.svg);
    if (have && (have.step === job.step || have.pending)) return;
    // a running job's curve is fetched again at most every SPARK_REFRESH_MS (a finished one at once)
    if (have && have.at && !TERMINAL.has(job.state) && performance.now() - have.at < SPARK_REFRESH_MS) return;
    if (!job.step) {
      const svg = sparkline([], { label: `${job.id} loss` });
      sparks.set(job.id, { step: job.step, svg, pending: false });
      cell.replaceChildren(svg);
      return;
    }
    sparks.set(job.id, { ...(have || {}), pending: true });
    sparkQueue.push({ job, cell });
    pumpSparks();
  }

  function pumpSparks() {
    while (!stopped && sparkActive < SPARK_CONCURRENCY && sparkQueue.length) {
      const { job, cell } = sparkQueue.shift();
      sparkActive += 1;
      sparkValues(job, 64).then((values) => {
        if (stopped) return;
        const svg = sparkline(values, { label: `${job.id} loss` });
        svg.dataset.points = String(values.length);
        sparks.set(job.id, { step: job.step, svg, pending: false, at: performance.now() });
        const row = rows.get(job.id);
        if (row) row.cells.spark.replaceChildren(svg);
      }).catch(() => {
        const have = sparks.get(job.id);
        sparks.set(job.id, { ...(have || {}), pending: false }); // try again at the next poll
      }).finally(() => { sparkActive -= 1; pumpSparks(); });
    }
  }

  function updateCompare() {
    compare.disabled = selected.size < 2;
    compare.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
  }

  // -- live updates and keys ------------------------------------------------------------------
  const timer = setInterval(() => { if (document.visibilityState === "visible") refresh(); }, POLL_MS);
  const onVisible = () => { if (document.visibilityState === "visible") refresh(); };
  document.addEventListener("visibilitychange", onVisible);
  const onKey = (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName))
        && target.type !== "checkbox") return;
    if (event.key === "n" && !older.disabled) { event.preventDefault(); go(index + 1); }
    else if (event.key === "p" && !newer.disabled) { event.preventDefault(); go(index - 1); }
  };
  document.addEventListener("keydown", onKey);

  await refresh();

  return () => {
    stopped = true;
    clearInterval(timer);
    document.removeEventListener("visibilitychange", onVisible);
    document.removeEventListener("keydown", onKey);
  };
}

function shortId(id) {
  return id.startsWith("job_") ? id.slice(4, 12) : id;
}
