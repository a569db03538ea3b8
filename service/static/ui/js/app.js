// The dashboard shell: hash routes, the API key prompt, the theme.
//
// Routes (hash, so the server serves one page and links can be bookmarked):
//   #/jobs[?state=running]          pages/jobs.js
//   #/jobs/<job id>                 pages/job.js
//   #/compare[?ids=a,b,c]           pages/compare.js
//   #/sweeps, #/sweeps/<sweep id>   pages/sweeps.js
//   #/graphs/<graph id>[?job=<id>]  pages/graph.js
//   #/submit                        pages/submit.js
// A page module exports `async mount(root, ctx)`, returning an optional cleanup function that
// runs when the route changes (close streams, stop timers). ctx = { params, query, navigate,
// setTitle, onThemeChange } (query: URLSearchParams; onThemeChange(fn) registers a redraw).

import { api, ApiError } from "./api.js";
import { clear, h, problemBox } from "./dom.js";

const PAGES = {
  jobs: () => import("./pages/jobs.js"),
  job: () => import("./pages/job.js"),
  compare: () => import("./pages/compare.js"),
  sweeps: () => import("./pages/sweeps.js"),
  graph: () => import("./pages/graph.js"),
  submit: () => import("./pages/submit.js"),
};
const THEME_STORAGE = "chainrule.theme";

export function route(hash) {
  const [path, queryString = ""] = hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(queryString);
  if (parts[0] === "jobs" && parts[1]) return { page: "job", nav: "jobs", params: { id: parts[1] }, query };
  if (parts[0] === "graphs" && parts[1]) return { page: "graph", nav: "jobs", params: { id: parts[1] }, query };
  if (parts[0] === "compare") return { page: "compare", nav: "compare", params: {}, query };
  if (parts[0] === "sweeps") return { page: "sweeps", nav: "sweeps", params: parts[1] ? { id: parts[1] } : {}, query };
  if (parts[0] === "submit") return { page: "submit", nav: "submit", params: {}, query };
  return { page: "jobs", nav: "jobs", params: {}, query };
}

export function navigate(hash) { window.location.hash = hash; }

let cleanup = null;
let themeListeners = [];
let generation = 0;

async function render() {
  const view = document.getElementById("view");
  const current = route(window.location.hash || "#/jobs");
  const mine = ++generation;
  if (cleanup) { try { cleanup(); } catch (error) { console.warn("page cleanup failed", error); } }
  cleanup = null;
  themeListeners = [];
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === current.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clear(view);
  const root = h("div", { class: `page page-${current.page}` });
  view.append(root);
  try {
    const module = await PAGES[current.page]();
    if (mine !== generation) return;
    const ctx = {
      params: current.params, query: current.query, navigate,
      setTitle: (title) => { document.title = title ? `${title} · chainrule` : "chainrule"; },
      onThemeChange: (fn) => themeListeners.push(fn),
    };
    const result = await module.mount(root, ctx);
    if (mine !== generation) { if (typeof result === "function") result(); return; }
    cleanup = typeof result === "function" ? result : null;
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof ApiError && error.status === 401) return; // the key prompt is open
    clear(root).append(error instanceof ApiError ? problemBox(error)
      : h("div", { class: "banner", role: "alert" }, `This page failed: ${error.message || error}`));
    if (!(error instanceof ApiError)) console.error(error);
  }
}

// -- the API key ------------------------------------------------------------------------------
let prompting = null;

function askForKey(message) {
  const dialog = document.getElementById("key-dialog");
  const errorBox = document.getElementById("key-error");
  errorBox.hidden = !message;
  errorBox.textContent = message || "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
  if (!prompting) {
    prompting = new Promise((resolve) => {
      document.getElementById("key-form").addEventListener("submit", async (event) => {
        event.preventDefault();
        const key = document.getElementById("key-input").value.trim();
        if (!key) return;
        api.setKey(key);
        if (await checkAccess()) { dialog.close(); prompting = null; resolve(); render(); }
      });
    });
  }
  return prompting;
}

// Whether the API accepts this tab's key (or needs none). Shows the prompt otherwise.
async function checkAccess() {
  try {
    const response = await fetch(api.url("v1/jobs?limit=1"), { headers: api.headers() });
    if (response.status === 401) {
      const hadKey = Boolean(api.key());
      api.clearKey();
      askForKey(hadKey ? "The API refused this key (401 Unauthorized). Check it and try again." : null);
      return false;
    }
    document.getElementById("signout").hidden = !api.key();
    return true;
  } catch (error) {
    return true; // unreachable: the page shows that itself
  }
}

// -- theme --------------------------------------------------------------------------------------
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  document.getElementById("theme").textContent = theme === "dark" ? "Light theme" : "Dark theme";
  for (const fn of themeListeners) { try { fn(theme); } catch (error) { console.warn(error); } }
}

function initialTheme() {
  const saved = localStorage.getItem(THEME_STORAGE);
  if (saved === "light" || saved === "dark") return saved;
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

async function start() {
  applyTheme(initialTheme());
  document.getElementById("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem(THEME_STORAGE, next);
    applyTheme(next);
  });
  document.getElementById("signout").addEventListener("click", () => {
    api.clearKey();
    document.getElementById("signout").hidden = true;
    checkAccess();
  });
  api.onUnauthorized(() => {
    const hadKey = Boolean(api.key());
    api.clearKey();
    askForKey(hadKey ? "The API refused this key (401 Unauthorized). Check it and try again." : null);
  });
  window.addEventListener("hashchange", render);
  if (await checkAccess()) render();
}

start();
