// The API's own OpenAPI document (GET openapi.json, relative to the API root like every call),
// loaded once per page load: the Submit form is built from it and the pages ask it whether an
// endpoint exists before calling it (a missing route would otherwise be a 404 in the console).
//
//   import { openapi, hasOperation, resolve } from "./openapi.js";
//   const spec = await openapi();
//   if (hasOperation(spec, "get", "/v1/graphs/{graph_id}/analysis")) ...

import { api } from "./api.js";

let loading = null;

export function openapi() {
  if (!loading) loading = api.get("openapi.json").catch((error) => { loading = null; throw error; });
  return loading;
}

// Paths are matched with any parameter name ({id} and {graph_id} alike).
export function operation(spec, method, path) {
  const norm = (p) => p.replace(/\{[^}]*\}/g, "{}");
  for (const [p, item] of Object.entries((spec && spec.paths) || {})) {
    if (norm(p) === norm(path) && item[method.toLowerCase()]) return item[method.toLowerCase()];
  }
  return null;
}

export function hasOperation(spec, method, path) { return operation(spec, method, path) !== null; }

export function hasQueryParameter(spec, method, path, name) {
  const op = operation(spec, method, path);
  return Boolean(op && (op.parameters || []).some((p) => p.name === name && p.in === "query"));
}

// A schema with $ref followed (components only), one level.
export function resolve(spec, schema) {
  let s = schema || {};
  for (let i = 0; i < 10 && s.$ref; i++) {
    const path = s.$ref.replace(/^#\//, "").split("/");
    let target = spec;
    for (const part of path) target = target && target[part];
    s = { ...(target || {}), ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== "$ref")) };
  }
  return s;
}

// {type, nullable, schema} of a property: anyOf [X, null] becomes X with nullable = true.
export function simplify(spec, schema) {
  let s = resolve(spec, schema);
  let nullable = false;
  const alts = s.anyOf || s.oneOf;
  if (Array.isArray(alts)) {
    const rest = alts.filter((a) => a.type !== "null");
    nullable = rest.length < alts.length;
    if (rest.length === 1) {
      const inner = resolve(spec, rest[0]);
      const { anyOf, oneOf, ...outer } = s;
      s = { ...inner, ...outer, description: outer.description || inner.description };
    }
  }
  return { schema: s, nullable };
}
