// The submit page (#/submit): a graph (dropped or picked file, JSON or msgpack; pasted JSON; or the
// API's own example), a data file as the CLI takes it (.json tensor map, .npz, .msgpack) and the
// training options, as a form built from the API's OpenAPI schema for JobRequest (every property
// but graph/graph_id/data/eval_data, which the drop zones fill), so options the API adds later
// appear here by themselves. Problems are shown at their JSON-pointer location before submitting
// (POST v1/jobs?dry_run=true, debounced; when the API has no dry run, on submit). On submit
// (POST v1/jobs) the page goes to the job's page.
//
// A body with a msgpack part (graph or data file) is sent as msgpack: the file's bytes are spliced
// in as the value (msgpack is concatenative), the rest encoded by msgpack.js.

import { api, ApiError } from "../api.js";
import { clear, h, problemBox } from "../dom.js";
import { Ext, Raw, encode } from "../msgpack.js";
import { readNpz } from "../npz.js";
import { hasQueryParameter, openapi, operation, resolve, simplify } from "../openapi.js";
import { base64ToBytes, bytesToBase64, isTensor } from "../tensor.js";

const FILLED_BY_DROP_ZONES = new Set(["graph", "graph_id", "data", "eval_data"]);
const TENSOR_EXT = 1;
const DEBOUNCE_MS = 400;

export async function mount(root, ctx) {
  ctx.setTitle("submit");
  const spec = await openapi();
  const jobRequest = resolve(spec, { $ref: "#/components/schemas/JobRequest" });
  const dryRunSupported = hasQueryParameter(spec, "post", "/v1/jobs", "dry_run");
  const example = apiExample(spec);

  const state = { graph: null, data: null, eval_data: null };
  const zones = {};
  const fields = []; // {pointer, read(): value | undefined, wrap, input}

  // -- drop zones --------------------------------------------------------------------------
  const graphZone = dropZone({
    key: "graph", pointer: "/graph", title: "Graph", accept: ".json,.msgpack,.mpk,.msgp,application/json",
    hint: "a graph document: JSON or msgpack (chainrule.graph)", paste: "Paste the graph's JSON",
    load: loadGraph,
  });
  const dataZone = dropZone({
    key: "data", pointer: "/data", title: "Training data", accept: ".json,.npz,.msgpack,.mpk,.msgp",
    hint: "named tensors: .json (a tensor map), .npz (np.savez) or .msgpack (runtime.save_tensors)",
    paste: "Paste a tensor map (JSON)", load: loadData,
  });
  const evalZone = dropZone({
    key: "eval_data", pointer: "/eval_data", title: "Evaluation data (optional)", accept: ".json,.npz,.msgpack,.mpk,.msgp",
    hint: "held-out examples in the same form; set eval_every below", paste: "Paste a tensor map (JSON)", load: loadData,
  });
  Object.assign(zones, { graph: graphZone, data: dataZone, eval_data: evalZone });

  const exampleButton = example ? h("button", { type: "button", id: "sp-example", onclick: () => {
    setPart("graph", { kind: "json", doc: example.graph, label: `the API's example graph (${example.graph.name || "graph"})` });
    setPart("data", { kind: "map", map: example.data, label: "the API's example data" });
  } }, "Use the API's example (seed graph and 4 rows)") : null;

  // -- options from the schema -------------------------------------------------------------
  const optionsBox = h("div", { class: "sp-options", id: "sp-options" });
  const required = new Set(jobRequest.required || []);
  for (const [name, schema] of Object.entries(jobRequest.properties || {})) {
    if (FILLED_BY_DROP_ZONES.has(name)) continue;
    optionsBox.append(renderField(name, `/${name}`, schema, required.has(name)));
  }

  const general = h("div", { class: "sp-general", id: "sp-general", "data-errors-for": "" });
  const checkStatus = h("span", { class: "muted", id: "sp-check", role: "status" });
  const submitButton = h("button", { type: "submit", class: "primary", id: "sp-submit" }, "Submit job");
  const form = h("form", { id: "sp-form", novalidate: true },
    h("div", { class: "sp-zones" }, graphZone.el, dataZone.el, evalZone.el),
    exampleButton ? h("p", {}, exampleButton) : null,
    h("section", { class: "card" }, h("h2", {}, "Training options"),
      h("p", { class: "muted sp-lead" }, "From the API's schema (JobRequest); empty fields take the API's defaults."),
      optionsBox),
    general,
    h("div", { class: "row sp-actions" }, submitButton, checkStatus));
  root.append(h("h1", {}, "Submit a training job"), form);

  // -- parts -------------------------------------------------------------------------------
  function setPart(key, part, error = null) {
    state[key] = part;
    zones[key].show(part, error);
    schedule();
  }

  async function loadGraph(file, text) {
    if (text !== undefined) return { kind: "json", doc: parseJson(text, "the graph"), label: "pasted JSON" };
    const bytes = new Uint8Array(await file.arrayBuffer());
    if (isMsgpackName(file.name) || (!/\.json$/i.test(file.name) && bytes[0] !== 0x7b && bytes[0] !== 0x20)) {
      return { kind: "msgpack", bytes, label: `${file.name} (msgpack, ${bytes.length} bytes, sent as is)` };
    }
    return { kind: "json", doc: parseJson(new TextDecoder().decode(bytes), file.name), label: file.name };
  }

  async function loadData(file, text) {
    if (text !== undefined) return { kind: "map", map: tensorMap(parseJson(text, "the data")), label: "pasted JSON" };
    const buffer = await file.arrayBuffer();
    const bytes = new Uint8Array(buffer);
    if (/\.npz$/i.test(file.name) || (bytes[0] === 0x50 && bytes[1] === 0x4b)) {
      return { kind: "map", map: await readNpz(buffer), label: `${file.name} (npz)` };
    }
    if (isMsgpackName(file.name) || (!/\.json$/i.test(file.name) && bytes[0] !== 0x7b)) {
      return { kind: "msgpack", bytes, label: `${file.name} (msgpack, ${bytes.length} bytes, sent as is)` };
    }
    return { kind: "map", map: tensorMap(parseJson(new TextDecoder().decode(bytes), file.name)), label: file.name };
  }

  function dropZone({ key, pointer, title, accept, hint, paste, load }) {
    const id = `sp-file-${key}`;
    const input = h("input", { type: "file", id, accept, class: "sp-file", "data-zone": key });
    const summary = h("div", { class: "sp-summary", id: `sp-summary-${key}` }, h("span", { class: "muted" }, "nothing yet"));
    const errors = h("ul", { class: "sp-errors", "data-errors-for": pointer });
    const textarea = h("textarea", { rows: 5, spellcheck: "false", class: "mono", id: `sp-paste-${key}`, "aria-label": paste });
    const clearButton = h("button", { type: "button", class: "ghost sp-clear", hidden: true,
      onclick: () => { input.value = ""; textarea.value = ""; setPart(key, null); } }, "Remove");
    const zone = h("label", { class: "sp-drop", for: id },
      h("span", { class: "sp-drop-text" }, h("b", {}, "Drop a file here"), " or ", h("u", {}, "choose one")),
      h("span", { class: "muted sp-drop-hint" }, hint), input);
    const el = h("section", { class: "card sp-zone", "data-pointer": pointer, id: `sp-zone-${key}` },
      h("div", { class: "row sp-zone-head" }, h("h2", {}, title), h("span", { class: "spacer" }), clearButton),
      zone, h("details", {}, h("summary", {}, paste), textarea), summary, errors);
    const take = async (file, text) => {
      try { setPart(key, await load(file, text)); }
      catch (error) { setPart(key, null, error.message || String(error)); }
    };
    input.addEventListener("change", () => { if (input.files[0]) take(input.files[0]); });
    let pasteTimer = null;
    textarea.addEventListener("input", () => {
      clearTimeout(pasteTimer);
      pasteTimer = setTimeout(() => { if (textarea.value.trim()) take(undefined, textarea.value); else setPart(key, null); }, 250);
    });
    for (const type of ["dragenter", "dragover"]) zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("sp-over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("sp-over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("sp-over");
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) take(file);
      else if (event.dataTransfer) { const text = event.dataTransfer.getData("text/plain"); if (text) take(undefined, text); }
    });
    const show = (part, error) => {
      clear(summary);
      clearButton.hidden = !part;
      el.classList.toggle("sp-filled", Boolean(part));
      if (error) summary.append(h("p", { class: "error" }, error));
      else if (!part) summary.append(h("span", { class: "muted" }, "nothing yet"));
      else summary.append(h("p", {}, "✓ ", part.label), describe(key, part));
    };
    return { el, show };
  }

  function describe(key, part) {
    if (key === "graph" && part.kind === "json") {
      const d = part.doc || {};
      const inputs = Object.entries(d.inputs || {}).map(([n, t]) => `${n} ${t.dtype} [${(t.shape || []).join(", ")}]`);
      return h("p", { class: "muted sp-desc" }, `${d.name || "graph"}: ${(d.nodes || []).length} nodes; `,
        `${Object.keys(d.parameters || {}).length} parameters; inputs ${inputs.join(", ") || "none"}`);
    }
    if (part.kind === "map") {
      return h("ul", { class: "sp-tensors mono" }, Object.entries(part.map).map(([n, t]) =>
        h("li", {}, `${n} ${t.dtype} [${(t.shape || []).join(", ")}]`)));
    }
    return null;
  }

  // -- options -----------------------------------------------------------------------------
  function renderField(name, pointer, rawSchema, isRequired) {
    const { schema, nullable } = simplify(spec, rawSchema);
    const id = `sp-f-${pointer.slice(1).replace(/\//g, "-")}`;
    const label = humanize(name);
    const help = schema.description ? h("small", { class: "muted sp-help", id: `${id}-help` }, oneLine(schema.description)) : null;
    const errors = h("ul", { class: "sp-errors", "data-errors-for": pointer });
    const inputName = pointer.slice(1).replace(/\//g, ".");
    let input, read;
    const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
    if (schema.properties && (type === "object" || !type)) {
      // a nested object (the optimizer): its properties, and free-form extras when allowed
      const inner = h("div", { class: "sp-nested" });
      const req = new Set(schema.required || []);
      const subs = [];
      for (const [sub, subSchema] of Object.entries(schema.properties)) {
        const before = fields.length;
        inner.append(renderField(sub, `${pointer}/${sub}`, subSchema, req.has(sub)));
        subs.push(...fields.splice(before));
      }
      let extra = null;
      if (schema.additionalProperties) {
        extra = h("input", { type: "text", id: `${id}-extra`, name: `${inputName}.extra`, class: "mono",
          placeholder: '{"momentum": 0.9}', "aria-describedby": `${id}-extra-help` });
        inner.append(h("div", { class: "sp-field", "data-pointer": `${pointer}/*` },
          h("label", { for: `${id}-extra` }, "Other settings (JSON object)"), extra,
          h("small", { class: "muted sp-help", id: `${id}-extra-help` }, "more keys for this object, e.g. hyperparameters"),
          h("ul", { class: "sp-errors", "data-errors-for": `${pointer}/*` })));
        extra.addEventListener("input", schedule);
      }
      const wrap = h("fieldset", { class: "sp-group", "data-pointer": pointer },
        h("legend", {}, label, isRequired ? h("span", { class: "sp-req", title: "required" }, " *") : null), help, inner, errors);
      fields.push({ pointer, wrap, read: () => {
        const out = {};
        for (const f of subs) { const v = f.read(); if (v !== undefined) out[f.pointer.split("/").pop()] = v; }
        if (extra && extra.value.trim()) {
          let more;
          try { more = JSON.parse(extra.value); } catch { throw new LocalProblem(`${pointer}/*`, "not a JSON object"); }
          if (!more || typeof more !== "object" || Array.isArray(more)) throw new LocalProblem(`${pointer}/*`, "not a JSON object");
          Object.assign(out, more);
        }
        return Object.keys(out).length || isRequired ? out : undefined;
      } });
      return wrap;
    }
    const common = { id, name: inputName, "aria-describedby": help ? `${id}-help` : null };
    if (Array.isArray(schema.enum)) {
      const hasDefault = schema.default !== undefined && schema.default !== null;
      input = h("select", common,
        !isRequired && !hasDefault ? h("option", { value: "" }, "(not set)") : null,
        schema.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
      if (hasDefault) input.value = JSON.stringify(schema.default);
      read = () => (input.value === "" ? undefined : JSON.parse(input.value));
    } else if (type === "boolean") {
      input = h("input", { ...common, type: "checkbox" });
      input.checked = Boolean(schema.default);
      read = () => input.checked;
    } else if (type === "integer" || type === "number") {
      const exclusive = (v) => (typeof v === "number" ? v : null);
      input = h("input", { ...common, type: "number", inputmode: type === "integer" ? "numeric" : "decimal",
        step: type === "integer" ? 1 : "any",
        min: exclusive(schema.minimum), max: Number.isSafeInteger(schema.maximum) ? schema.maximum : null,
        placeholder: nullable || schema.default === null || schema.default === undefined ? "default" : null });
      if (typeof schema.default === "number") input.value = String(schema.default);
      read = () => {
        const text = input.value.trim();
        if (text === "") {
          if (input.validity && input.validity.badInput) throw new LocalProblem(pointer, "not a number");
          return undefined;
        }
        const v = Number(text);
        if (!Number.isFinite(v)) throw new LocalProblem(pointer, "not a number");
        return v;
      };
    } else if (type === "string") {
      input = h("input", { ...common, type: "text" });
      if (typeof schema.default === "string") input.value = schema.default;
      read = () => (input.value === "" ? undefined : input.value);
    } else {
      input = h("input", { ...common, type: "text", class: "mono", placeholder: "JSON" });
      if (schema.default !== undefined && schema.default !== null) input.value = JSON.stringify(schema.default);
      read = () => {
        if (!input.value.trim()) return undefined;
        try { return JSON.parse(input.value); } catch { throw new LocalProblem(pointer, "not JSON"); }
      };
    }
    input.addEventListener(type === "boolean" || input.tagName === "SELECT" ? "change" : "input", schedule);
    const labelEl = h("label", { for: id }, label, isRequired ? h("span", { class: "sp-req", title: "required" }, " *") : null);
    const wrap = type === "boolean"
      ? h("div", { class: "sp-field sp-check", "data-pointer": pointer }, h("div", { class: "row" }, input, labelEl), help, errors)
      : h("div", { class: "sp-field", "data-pointer": pointer }, labelEl, input, help, errors);
    fields.push({ pointer, wrap, input, read });
    return wrap;
  }

  // -- the body --------------------------------------------------------------------------
  function options() {
    const out = {};
    for (const f of fields) {
      const v = f.read();
      if (v !== undefined) out[f.pointer.slice(1)] = v;
    }
    return out;
  }

  function body() {
    const out = options();
    const parts = ["graph", "data", "eval_data"].filter((k) => state[k]);
    const binary = parts.some((k) => state[k].kind === "msgpack");
    for (const k of parts) {
      const part = state[k];
      if (part.kind === "id") out.graph_id = part.id;
      else if (part.kind === "msgpack") out[k] = new Raw(part.bytes);
      else if (part.kind === "json") out[k] = part.doc;
      else out[k] = binary ? mapForMsgpack(part.map) : mapForJson(part.map);
    }
    return binary ? encode(out) : out;
  }

  // -- validation ------------------------------------------------------------------------
  let timer = null, checking = null, generation = 0;
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(check, DEBOUNCE_MS);
  }

  function showProblems(errors, problem = null) {
    for (const el of root.querySelectorAll(".sp-errors")) clear(el);
    for (const el of root.querySelectorAll(".sp-invalid")) el.classList.remove("sp-invalid");
    for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    clear(general);
    if (problem) general.append(errors.length ? h("div", { class: "banner", role: "alert" }, problem.message) : problemBox(problem));
    const unplaced = h("ul", { class: "sp-errors" });
    for (const e of errors) {
      const target = placeFor(e.location || "");
      const list = target ? target.querySelector(":scope > .sp-errors") : null;
      const item = h("li", { "data-location": e.location || "" }, e.location ? h("code", {}, e.location) : null, " ",
        e.message, e.hint ? h("span", { class: "muted" }, ` (${e.hint})`) : null);
      if (list) {
        list.append(item);
        target.classList.add("sp-invalid");
        const input = target.querySelector("input, select, textarea");
        if (input && target.classList.contains("sp-field")) input.setAttribute("aria-invalid", "true");
      } else unplaced.append(item);
    }
    if (unplaced.firstChild) general.append(unplaced);
  }

  // The element a JSON pointer belongs to: the deepest field or zone whose pointer is its prefix.
  function placeFor(location) {
    let best = null, bestLength = -1;
    const loc = location === "/graph_id" ? "/graph" : location;
    for (const el of root.querySelectorAll("[data-pointer]")) {
      const p = el.dataset.pointer;
      const wildcard = p.endsWith("/*");
      const matches = wildcard ? loc.startsWith(p.slice(0, -1)) : loc === p || loc.startsWith(p + "/");
      const length = wildcard ? p.length - 1 : p.length; // "/optimizer/*" beats "/optimizer", not "/optimizer/lr"
      if (matches && length > bestLength) { best = el; bestLength = length; }
    }
    return best;
  }

  async function check() {
    const mine = ++generation;
    if (checking) checking.abort();
    checking = null;
    let payload;
    try { payload = body(); }
    catch (error) {
      if (!(error instanceof LocalProblem)) throw error;
      showProblems([{ location: error.pointer, message: error.message }]);
      checkStatus.textContent = "";
      return false;
    }
    if (!state.graph) { showProblems([]); checkStatus.textContent = "Give a graph and its data."; return false; }
    if (!state.data && state.graph.kind === "id") { showProblems([]); checkStatus.textContent = "Give the training data."; return false; }
    if (!dryRunSupported) { showProblems([]); checkStatus.textContent = "This API checks the job when it is submitted."; return true; }
    checking = new AbortController();
    checkStatus.textContent = "checking…";
    try {
      const result = await api.post("v1/jobs?dry_run=true", payload, { signal: checking.signal });
      if (mine !== generation) return false;
      showProblems([]);
      if (!state.data) { checkStatus.textContent = "Give the training data."; return false; }
      const steps = result && Number.isInteger(result.total_steps) ? `: ${result.total_steps} steps` : "";
      checkStatus.textContent = `✓ The API accepts this job${steps}.`;
      form.dataset.checked = "ok";
      return true;
    } catch (error) {
      if (error.name === "AbortError" || mine !== generation) return false;
      if (!(error instanceof ApiError)) throw error;
      let errors = error.errors;
      if (!state.data) errors = errors.filter((e) => !(e.location || "").startsWith("/data"));
      showProblems(errors, errors.length ? null : (state.data || error.errors.length === 0 ? error : null));
      checkStatus.textContent = errors.length ? `${errors.length} problem${errors.length === 1 ? "" : "s"} to fix` :
        state.data ? "" : "Give the training data.";
      form.dataset.checked = "problems";
      return false;
    } finally {
      if (mine === generation) checking = null;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearTimeout(timer);
    generation++;
    if (checking) { checking.abort(); checking = null; }
    let payload;
    try { payload = body(); }
    catch (error) {
      if (!(error instanceof LocalProblem)) throw error;
      showProblems([{ location: error.pointer, message: error.message }]);
      return;
    }
    if (!state.graph || !state.data) {
      showProblems([...(!state.graph ? [{ location: "/graph", message: "give a graph" }] : []),
        ...(!state.data ? [{ location: "/data", message: "give the training data" }] : [])]);
      return;
    }
    submitButton.disabled = true;
    checkStatus.textContent = "submitting…";
    try {
      const job = await api.post("v1/jobs", payload);
      checkStatus.textContent = `submitted ${job.id}`;
      ctx.navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showProblems(error.errors, error);
      checkStatus.textContent = "";
    } finally {
      submitButton.disabled = false;
    }
  });

  // #/submit?graph=<id>: a stored graph (the Graph page's "Train this graph"), sent as graph_id
  const storedGraph = ctx.query.get("graph");
  if (storedGraph) setPart("graph", { kind: "id", id: storedGraph, label: `the stored graph ${storedGraph}` });

  return () => { clearTimeout(timer); generation++; if (checking) checking.abort(); };
}

class LocalProblem extends Error {
  constructor(pointer, message) { super(message); this.pointer = pointer; }
}

function parseJson(text, what) {
  try { return JSON.parse(text); } catch (error) { throw new Error(`${what} is not JSON: ${error.message}`); }
}

function isMsgpackName(name) { return /\.(msgpack|mpk|msgp)$/i.test(name || ""); }

// "batch_size" -> "Batch size", "time_limit_s" -> "Time limit (s)"
function humanize(name) {
  const text = name.replace(/_s$/, " (s)").replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function oneLine(text) { return text.replace(/``/g, "`").replace(/\s+/g, " ").trim(); }

function tensorMap(tree) {
  if (!tree || typeof tree !== "object" || Array.isArray(tree)) throw new Error("expected a map of name -> tensor");
  for (const [name, t] of Object.entries(tree)) {
    if (!isTensor(t)) throw new Error(`${name} is not a tensor {dtype, shape, data}`);
  }
  return tree;
}

function mapForJson(map) {
  return Object.fromEntries(Object.entries(map).map(([name, t]) =>
    [name, t.bytes instanceof Uint8Array ? { dtype: t.dtype, shape: t.shape, base64: bytesToBase64(t.bytes) } : t]));
}

function mapForMsgpack(map) {
  return Object.fromEntries(Object.entries(map).map(([name, t]) => {
    if (t.bytes instanceof Uint8Array) return [name, { dtype: t.dtype, shape: t.shape, data: new Ext(TENSOR_EXT, t.bytes) }];
    if (typeof t.base64 === "string") return [name, { dtype: t.dtype, shape: t.shape, data: new Ext(TENSOR_EXT, base64ToBytes(t.base64)) }];
    return [name, t];
  }));
}

// The JobRequest example in the API's own OpenAPI document (a graph and a few rows), if any.
function apiExample(spec) {
  const op = operation(spec, "post", "/v1/jobs");
  const content = op && op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  let ex = content && (content.example || (content.examples && Object.values(content.examples)[0]?.value));
  if (ex && ex.graph && ex.data) return ex;
  return null;
}
