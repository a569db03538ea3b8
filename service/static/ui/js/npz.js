// numpy .npz archives in the browser: a zip (stored or deflated entries, as np.savez and
// np.savez_compressed write them) of .npy files -> {name: {dtype, shape, bytes}} in the API's
// dtypes (little-endian raw bytes; int8-int32/uint8-uint32 are widened to int64, float16 to
// float32). Fortran-ordered arrays are refused with a message (np.ascontiguousarray fixes them).
//
//   import { readNpz } from "./npz.js";
//   const tensors = await readNpz(await file.arrayBuffer());

export class NpzError extends Error {}

export async function readNpz(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  // End of central directory: the last 0x06054b50 within the final 64 KiB + 22 bytes.
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 65557); i--) {
    if (view.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new NpzError("not a zip archive (no end of central directory): is this an .npz file?");
  let entries = view.getUint16(eocd + 10, true);
  let cd = view.getUint32(eocd + 16, true);
  if (cd === 0xffffffff || entries === 0xffff) {
    const locator = eocd - 20; // zip64 end of central directory locator
    if (locator < 0 || view.getUint32(locator, true) !== 0x07064b50) throw new NpzError("broken zip64 archive");
    const record = Number(view.getBigUint64(locator + 8, true));
    entries = Number(view.getBigUint64(record + 32, true));
    cd = Number(view.getBigUint64(record + 48, true));
  }
  const out = {};
  let at = cd;
  for (let k = 0; k < entries; k++) {
    if (view.getUint32(at, true) !== 0x02014b50) throw new NpzError("broken zip central directory");
    const method = view.getUint16(at + 10, true);
    let compressed = view.getUint32(at + 20, true);
    let size = view.getUint32(at + 24, true);
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    let local = view.getUint32(at + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength));
    // zip64 extra field: the 64-bit values of those given as 0xffffffff, in this order
    let extra = at + 46 + nameLength;
    const extraEnd = extra + extraLength;
    while (extra + 4 <= extraEnd) {
      const id = view.getUint16(extra, true), len = view.getUint16(extra + 2, true);
      if (id === 0x0001) {
        let p = extra + 4;
        if (size === 0xffffffff) { size = Number(view.getBigUint64(p, true)); p += 8; }
        if (compressed === 0xffffffff) { compressed = Number(view.getBigUint64(p, true)); p += 8; }
        if (local === 0xffffffff) { local = Number(view.getBigUint64(p, true)); p += 8; }
      }
      extra += 4 + len;
    }
    at = extraEnd + commentLength;
    if (view.getUint32(local, true) !== 0x04034b50) throw new NpzError(`broken zip entry ${name}`);
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    const raw = bytes.subarray(start, start + compressed);
    let data;
    if (method === 0) data = raw;
    else if (method === 8) data = await inflate(raw);
    else throw new NpzError(`${name}: zip compression method ${method} is not supported (use np.savez or np.savez_compressed)`);
    if (data.length !== size) throw new NpzError(`${name}: expected ${size} bytes, got ${data.length}`);
    if (!name.endsWith(".npy")) continue;
    out[name.slice(0, -4)] = readNpy(data, name);
  }
  return out;
}

async function inflate(raw) {
  const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const WIDEN = { i1: 1, i2: 2, i4: 4, u1: 1, u2: 2, u4: 4 };

// One .npy file -> {dtype, shape, bytes}
export function readNpy(data, name = "array") {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (!magic.every((b, i) => data[i] === b)) throw new NpzError(`${name} is not a .npy array`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const major = data[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const header = new TextDecoder(major >= 3 ? "utf-8" : "latin1").decode(data.subarray(headerStart, headerStart + headerLength));
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeText) throw new NpzError(`${name}: unreadable .npy header (a structured or object array?)`);
  const shape = shapeText[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  if (fortran[1] === "True" && shape.length > 1) {
    throw new NpzError(`${name}: Fortran-ordered array; save np.ascontiguousarray(array) instead`);
  }
  let body = data.subarray(headerStart + headerLength);
  const order = descr[1][0], kind = descr[1].slice(1);
  const width = Number(kind.slice(1));
  if (order === ">" && width > 1) body = swap(body, width);
  const take = (bytesPer) => {
    if (body.length < n * bytesPer) throw new NpzError(`${name}: the array holds fewer bytes than its shape needs`);
    return body.slice(0, n * bytesPer);
  };
  if (kind === "f8") return { dtype: "float64", shape, bytes: take(8) };
  if (kind === "f4") return { dtype: "float32", shape, bytes: take(4) };
  if (kind === "i8") return { dtype: "int64", shape, bytes: take(8) };
  if (kind === "b1") return { dtype: "bool", shape, bytes: take(1) };
  if (kind in WIDEN) {
    const src = take(WIDEN[kind]);
    const sv = new DataView(src.buffer);
    const dst = new Uint8Array(n * 8);
    const dv = new DataView(dst.buffer);
    for (let i = 0; i < n; i++) {
      const w = WIDEN[kind];
      const signed = kind[0] === "i";
      const v = w === 1 ? (signed ? sv.getInt8(i) : sv.getUint8(i))
        : w === 2 ? (signed ? sv.getInt16(i * 2, true) : sv.getUint16(i * 2, true))
        : (signed ? sv.getInt32(i * 4, true) : sv.getUint32(i * 4, true));
      dv.setBigInt64(i * 8, BigInt(v), true);
    }
    return { dtype: "int64", shape, bytes: dst };
  }
  if (kind === "f2") {
    const src = take(2);
    const dst = new Uint8Array(n * 4);
    const sv = new DataView(src.buffer), dv = new DataView(dst.buffer);
    for (let i = 0; i < n; i++) dv.setFloat32(i * 4, half(sv.getUint16(i * 2, true)), true);
    return { dtype: "float32", shape, bytes: dst };
  }
  throw new NpzError(`${name}: numpy dtype '${descr[1]}' is not supported (chainrule takes float32, float64, int64 and bool)`);
}

function swap(body, width) {
  const out = new Uint8Array(body.length - (body.length % width));
  for (let i = 0; i < out.length; i += width) for (let j = 0; j < width; j++) out[i + j] = body[i + width - 1 - j];
  return out;
}

function half(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}
