// Small DOM and formatting helpers shared by the pages.
//
//   h("a", { href: "#/jobs", class: "x", onclick: fn }, "text", child, ...)  -> Element
//   Attributes starting with "on" become listeners; `null`/`false` attributes are skipped;
//   children may be strings, numbers, Elements, arrays or null. Text is never parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

export const fmt = {
  // a loss or other float: 6 significant digits, "-" when absent
  num(x, digits = 6) {
    if (x === null || x === undefined) return "-";
    if (typeof x === "string") return x; // "NaN", "Infinity" as the API spells them
    if (!Number.isFinite(x)) return String(x);
    if (x !== 0 && (Math.abs(x) >= 1e6 || Math.abs(x) < 1e-4)) return x.toExponential(digits - 1);
    return String(Number(x.toPrecision(digits)));
  },
  // ISO time -> "2026-12-06 11:29:23" in the browser's time zone
  time(iso) {
    if (!iso) return "-";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  },
  // seconds between two ISO times (or until now) -> "1.2 s", "3 min 4 s", "2 h 5 min"
  duration(startIso, endIso) {
    if (!startIso) return "-";
    const s = ((endIso ? new Date(endIso) : new Date()) - new Date(startIso)) / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  },
  progress(job) { return job.total_steps ? `${job.step}/${job.total_steps}` : String(job.step); },
  shape(shape) { return `[${(shape || []).join(", ")}]`; },
};

export function stateBadge(state) {
  return h("span", { class: `state state-${state}` }, state);
}

// A problem (ApiError) as an element: title/detail and each located error.
export function problemBox(error) {
  const box = h("div", { class: "banner", role: "alert" }, error.message);
  const errors = error.errors || [];
  if (errors.length) {
    box.append(h("ul", {}, errors.map((e) =>
      h("li", {}, h("code", {}, e.location || "/"), " ", e.message, e.hint ? ` (${e.hint})` : ""))));
  }
  return box;
}

// Download a Blob or text under a file name (the browser's "save as").
export function download(filename, content, type = "application/octet-stream") {
  const blob = content instanceof Blob ? content : new Blob([content], { type });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// A CSS custom property's value (theme colours for charts and drawings).
export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}
