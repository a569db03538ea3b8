// Tensors in the API's encoding ({dtype, shape, data | base64}) for the pages: decode to a flat
// list, summarise, nest, and base64 <-> bytes. Values may be the strings "NaN", "Infinity",
// "-Infinity" (how the API spells non-finite numbers in JSON).
//
//   import { decodeTensor, summarize, shapeOf, nest, fmtValue } from "../tensor.js";

export function isTensor(obj) {
  return Boolean(obj) && typeof obj === "object" && !Array.isArray(obj)
    && typeof obj.dtype === "string" && Array.isArray(obj.shape);
}

// Nested lists (or a scalar) -> a flat array, row-major.
export function flatten(value) {
  if (!Array.isArray(value)) return [value];
  const out = [];
  const walk = (v) => { for (const item of v) { if (Array.isArray(item)) walk(item); else out.push(item); } };
  walk(value);
  return out;
}

// The shape of nested lists: [2, 3] for [[1, 2, 3], [4, 5, 6]]; [] for a scalar.
export function shapeOf(value) {
  const shape = [];
  let v = value;
  while (Array.isArray(v)) { shape.push(v.length); v = v[0]; }
  return shape;
}

// A flat list -> nested lists of `shape` (a scalar for shape []).
export function nest(values, shape) {
  if (!shape.length) return values[0];
  let i = 0;
  const build = (depth) => {
    const n = shape[depth];
    const out = new Array(n);
    for (let k = 0; k < n; k++) out[k] = depth === shape.length - 1 ? values[i++] : build(depth + 1);
    return out;
  };
  return build(0);
}

export function bytesToBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

export function base64ToBytes(b64) {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// Little-endian raw bytes of `dtype` -> a flat array of numbers (booleans for bool).
export function bytesToValues(dtype, bytes) {
  const copy = bytes.slice().buffer; // aligned
  const view = new DataView(copy);
  const out = [];
  if (dtype === "float64") for (let i = 0; i + 8 <= bytes.length; i += 8) out.push(view.getFloat64(i, true));
  else if (dtype === "float32") for (let i = 0; i + 4 <= bytes.length; i += 4) out.push(view.getFloat32(i, true));
  else if (dtype === "int64") for (let i = 0; i + 8 <= bytes.length; i += 8) out.push(Number(view.getBigInt64(i, true)));
  else if (dtype === "bool") for (let i = 0; i < bytes.length; i++) out.push(bytes[i] !== 0);
  else throw new Error(`unknown dtype ${dtype}`);
  return out;
}

// {dtype, shape, data | base64 | bytes} -> {dtype, shape, values (flat)}
export function decodeTensor(t) {
  let values;
  if (t.bytes instanceof Uint8Array) values = bytesToValues(t.dtype, t.bytes);
  else if (typeof t.base64 === "string") values = bytesToValues(t.dtype, base64ToBytes(t.base64));
  else values = flatten(t.data);
  return { dtype: t.dtype, shape: t.shape, values };
}

// A JSON-able tensor with nested `data` (for display and editing).
export function toNested(t) {
  const { dtype, shape, values } = decodeTensor(t);
  return { dtype, shape, data: nest(values, shape) };
}

export function count(shape) { return shape.reduce((a, b) => a * b, 1); }

export function asNumber(x) {
  if (typeof x === "number") return x;
  if (typeof x === "boolean") return x ? 1 : 0;
  if (x === "NaN") return NaN;
  if (x === "Infinity") return Infinity;
  if (x === "-Infinity") return -Infinity;
  return NaN;
}

// {n, min, max, mean, nonfinite} over the finite values of a flat list
export function summarize(values) {
  let min = Infinity, max = -Infinity, sum = 0, finite = 0;
  for (const x of values) {
    const v = asNumber(x);
    if (!Number.isFinite(v)) continue;
    finite++; sum += v;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return { n: values.length, min: finite ? min : null, max: finite ? max : null,
           mean: finite ? sum / finite : null, nonfinite: values.length - finite };
}

// A number for a drawing: 4 significant digits, the API's strings as they are.
export function fmtValue(x, digits = 4) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "string") return x === "Infinity" ? "∞" : x === "-Infinity" ? "−∞" : x;
  if (typeof x === "boolean") return x ? "true" : "false";
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return "0";
  const a = Math.abs(x);
  const text = a >= 1e5 || a < 1e-3 ? x.toExponential(digits - 1).replace(/\.?0+e/, "e") : String(Number(x.toPrecision(digits)));
  return text.replace(/^-/, "−");
}
