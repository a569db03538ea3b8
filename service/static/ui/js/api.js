// The dashboard's client of the public /v1 API: nothing here that a script could not do.
//
//   import { api, ApiError } from "./api.js";
//   const page = await api.get("v1/jobs?limit=50");          // JSON, or throws ApiError
//   const job = await api.post("v1/jobs", body);             // a JS object (JSON) or a Blob/bytes
//   const sub = api.stream(jobId, { after: 0, onStep, onEnd, onError });   // SSE; sub.close()
//
// Paths are relative ("v1/..."): the page lives at <prefix>/ui/, so the API is at <prefix>/,
// which keeps the dashboard working behind a proxy under a path prefix (root_path).
// The API key (when the server has keys) is kept per tab in sessionStorage and sent as a
// Bearer header, never in a URL. A 401 calls the handler app.js installs (it asks for a key).

const KEY_STORAGE = "chainrule.api-key";
const BASE = new URL("../", window.location.href);

export class ApiError extends Error {
  // status: HTTP status (0 when the server could not be reached); problem: the RFC 9457 body
  constructor(status, problem) {
    super(problemText(status, problem));
    this.status = status;
    this.problem = problem || {};
  }
  get errors() { return Array.isArray(this.problem.errors) ? this.problem.errors : []; }
}

export function problemText(status, problem) {
  if (!problem) return status ? `HTTP ${status}` : "the API could not be reached";
  const head = `${problem.title || "Error"}${problem.detail ? ": " + problem.detail : ""}`;
  return status ? `${status} ${head}` : head;
}

let unauthorizedHandler = null;

export const api = {
  url(path) { return new URL(path.replace(/^\//, ""), BASE).toString(); },

  key() { return sessionStorage.getItem(KEY_STORAGE); },
  setKey(key) { sessionStorage.setItem(KEY_STORAGE, key); },
  clearKey() { sessionStorage.removeItem(KEY_STORAGE); },
  onUnauthorized(handler) { unauthorizedHandler = handler; },

  headers(extra = {}) {
    const headers = { ...extra };
    const key = this.key();
    if (key) headers["Authorization"] = `Bearer ${key}`;
    return headers;
  },

  // A Response for 2xx; else throws ApiError with the problem document.
  async request(method, path, { body, headers = {}, signal } = {}) {
    const init = { method, headers: this.headers(headers), signal };
    if (body !== undefined) {
      if (body instanceof Blob || body instanceof ArrayBuffer || ArrayBuffer.isView(body)) {
        init.body = body;
        if (!init.headers["Content-Type"]) init.headers["Content-Type"] = "application/msgpack";
      } else {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
    }
    let response;
    try {
      response = await fetch(this.url(path), init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, { title: "The chainrule API could not be reached", detail: String(error.message || error) });
    }
    if (response.ok) return response;
    let problem = null;
    try { problem = await response.json(); } catch { /* not JSON */ }
    const error = new ApiError(response.status, problem);
    if (response.status === 401 && unauthorizedHandler) unauthorizedHandler(error);
    throw error;
  },

  async get(path, options) { return (await this.request("GET", path, options)).json(); },
  async post(path, body, options = {}) { return (await this.request("POST", path, { ...options, body })).json(); },

  // Server-Sent Events over fetch (EventSource cannot send an Authorization header).
  // onStep(entry) for each step entry, onEnd(job) once the job is finished and every step sent,
  // onError(ApiError) when the stream cannot go on. A dropped connection resumes after the
  // last step received (Last-Event-ID), so no step is lost or repeated.
  stream(jobId, { after = 0, onStep, onEnd, onError } = {}) {
    const controller = new AbortController();
    let last = after;
    let closed = false;
    const run = async () => {
      let failures = 0;
      while (!closed) {
        try {
          const headers = { Accept: "text/event-stream" };
          if (last > 0) headers["Last-Event-ID"] = String(last);
          const response = await this.request("GET", `v1/jobs/${encodeURIComponent(jobId)}/events`,
            { headers, signal: controller.signal });
          failures = 0;
          const ended = await readEvents(response.body, (event, data, id) => {
            if (event === "step") {
              const entry = JSON.parse(data);
              last = entry.step;
              if (onStep) onStep(entry);
            } else if (event === "end") {
              closed = true;
              if (onEnd) onEnd(JSON.parse(data));
            } else if (event === "error") {
              throw new ApiError(0, JSON.parse(data));
            }
          });
          if (ended || closed) return;
        } catch (error) {
          if (closed || error.name === "AbortError") return;
          if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
            if (onError) onError(error);
            return;
          }
          failures += 1;
          if (failures > 5) { if (onError) onError(error); return; }
          await new Promise((resolve) => setTimeout(resolve, Math.min(4000, 250 * 2 ** failures)));
        }
      }
    };
    run();
    return { close() { closed = true; controller.abort(); } };
  },
};

// Parse an SSE body; calls handle(event, data, id) per event. True when the server closed it.
async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message", data = [], id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r?\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer[newline] === "\r" ? 2 : 1));
      if (line === "") {
        if (data.length) handle(event, data.join("\n"), id);
        event = "message"; data = []; id = null;
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
        else if (field === "id") id = text;
      }
    }
  }
}
