// The sweeps pages: #/sweeps lists the key's hyperparameter sweeps (GET v1/sweeps), #/sweeps/<id>
// shows one (GET v1/sweeps/{id}, polled while it runs): each trial's values, state, step and
// objective, the best highlighted, links to each trial's job page, "Compare trials" (the compare
// page with every trial's curves overlaid) and Cancel (POST v1/sweeps/{id}/cancel).

import { api } from "../api.js";
import { fmt, h, problemBox, stateBadge } from "../dom.js";

const POLL_MS = 1000;
const FINISHED = new Set(["succeeded", "cancelled"]);

function values(assignment) {
  return Object.entries(assignment).map(([k, v]) => `${k}=${typeof v === "number" ? fmt.num(v, 4) : v}`).join(", ");
}

export async function mount(root, ctx) {
  if (ctx.params.id) return mountOne(root, ctx, ctx.params.id);
  ctx.setTitle("Sweeps");
  const body = await api.get("v1/sweeps?limit=50");
  const rows = body.sweeps.map((s) => h("tr", { "data-sweep": s.id },
    h("td", {}, h("a", { href: `#/sweeps/${encodeURIComponent(s.id)}`, class: "mono" }, s.id)),
    h("td", {}, stateBadge(s.state)),
    h("td", {}, `${s.trials.length}/${s.max_trials}`),
    h("td", {}, s.best ? values(s.best.assignment) : "-"),
    h("td", {}, s.best ? fmt.num(s.best.objective) : "-"),
    h("td", {}, fmt.time(s.created))));
  root.append(h("h1", {}, "Sweeps"),
    h("p", { class: "muted" }, "Hyperparameter sweeps of this API key, newest first: start one with ",
      h("code", {}, "chainrule sweep"), " or POST /v1/sweeps (docs/training.md)."),
    rows.length ? h("div", { class: "table-wrap" }, h("table", { class: "sweep-table", id: "sweeps-table" },
      h("thead", {}, h("tr", {}, ...["Sweep", "State", "Trials", "Best values", "Best objective", "Created"]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, ...rows)))
      : h("p", { class: "muted", id: "sweeps-empty" }, "No sweeps yet."));
  return null;
}

async function mountOne(root, ctx, id) {
  ctx.setTitle(`Sweep ${id}`);
  let timer = null;
  const head = h("div", { class: "job-head row" });
  const summary = h("p", { class: "muted", id: "sweep-summary" });
  const table = h("table", { class: "sweep-table", id: "sweep-trials" });
  const status = h("span", { class: "muted", role: "status" });
  const compare = h("a", { id: "sweep-compare", class: "button" }, "Compare trials");
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-sweep", onclick: async () => {
    cancel.disabled = true;
    try { show(await (await api.request("POST", `v1/sweeps/${encodeURIComponent(id)}/cancel`)).json()); }
    catch (error) { status.replaceChildren(problemBox(error)); cancel.disabled = false; }
  } }, "Cancel sweep");
  root.append(head, summary, h("div", { class: "row" }, compare, cancel, status), h("div", { class: "table-wrap" }, table));

  function show(sweep) {
    head.replaceChildren(h("h1", {}, "Sweep ", h("code", { class: "job-id" }, sweep.id)), stateBadge(sweep.state));
    head.dataset.state = sweep.state;
    const rule = sweep.early_termination ? `, early termination: ${sweep.early_termination.rule}` : "";
    summary.textContent = `${sweep.method} search over ${Object.keys(sweep.space).join(", ")}: `
      + `${sweep.trials.length} of ${sweep.max_trials} trials launched, at most ${sweep.max_concurrent} at once; `
      + `compared by ${sweep.objective} (lower is better)${rule}.`;
    const best = sweep.best ? sweep.best.index : null;
    table.replaceChildren(
      h("thead", {}, h("tr", {}, ...["Trial", "Values", "State", "Step", sweep.objective, "Stopped because", "Job"]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, ...sweep.trials.map((t) => h("tr", { class: t.index === best ? "best" : "", "data-trial": String(t.index) },
        h("td", {}, t.index === best ? `${t.index} (best)` : String(t.index)),
        h("td", { class: "mono" }, values(t.assignment)),
        h("td", {}, stateBadge(t.state)),
        h("td", {}, t.step ?? "-"),
        h("td", {}, fmt.num(t.objective)),
        h("td", {}, t.stop_reason || "-"),
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(t.job_id)}`, class: "mono" }, t.job_id))))));
    compare.setAttribute("href", `#/compare?ids=${sweep.trials.map((t) => encodeURIComponent(t.job_id)).join(",")}`);
    cancel.disabled = FINISHED.has(sweep.state) || sweep.state === "cancelling";
    if (FINISHED.has(sweep.state) && timer) { clearInterval(timer); timer = null; }
  }

  show(await api.get(`v1/sweeps/${encodeURIComponent(id)}`));
  if (!cancel.disabled) {
    timer = setInterval(async () => {
      try { show(await api.get(`v1/sweeps/${encodeURIComponent(id)}`)); }
      catch (error) { status.replaceChildren(problemBox(error)); }
    }, POLL_MS);
  }
  return () => { if (timer) clearInterval(timer); };
}
