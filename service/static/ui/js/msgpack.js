// A tiny msgpack encoder (maps, strings, ints, floats, bools, null, arrays, bytes, extensions)
// for request bodies the Submit page sends as application/msgpack.
//
//   import { encode, Raw, Ext } from "./msgpack.js";
//   encode({ optimizer: { name: "sgd" }, data: new Raw(fileBytes) })   // -> Uint8Array
//
// Raw(bytes) is an already-encoded msgpack value spliced in as is (msgpack is concatenative:
// a data file written by runtime.save_tensors is a valid value for "data"). Ext(type, bytes)
// is an extension value (graphspec tensors: type 1, raw little-endian bytes).

export class Raw { constructor(bytes) { this.bytes = bytes; } }
export class Ext { constructor(type, bytes) { this.type = type; this.bytes = bytes; } }

export function encode(value) {
  const chunks = [];
  let size = 0;
  const push = (bytes) => { chunks.push(bytes); size += bytes.length; };
  const u8 = (...b) => push(Uint8Array.from(b));
  const be = (tag, n, bytes) => {
    const buf = new Uint8Array(1 + bytes); const v = new DataView(buf.buffer); buf[0] = tag;
    if (bytes === 1) v.setUint8(1, n); else if (bytes === 2) v.setUint16(1, n); else if (bytes === 4) v.setUint32(1, n);
    else v.setBigUint64(1, BigInt.asUintN(64, BigInt(n)));
    push(buf);
  };
  const length = (n, fix, fixMax, t8, t16, t32) => {
    if (fix !== null && n <= fixMax) u8(fix | n);
    else if (t8 !== null && n < 0x100) be(t8, n, 1);
    else if (n < 0x10000) be(t16, n, 2);
    else be(t32, n, 4);
  };
  const write = (x) => {
    if (x === null || x === undefined) u8(0xc0);
    else if (x === false) u8(0xc2);
    else if (x === true) u8(0xc3);
    else if (typeof x === "number") {
      if (Number.isInteger(x) && Math.abs(x) <= Number.MAX_SAFE_INTEGER) {
        if (x >= 0) {
          if (x < 0x80) u8(x); else if (x < 0x100) be(0xcc, x, 1); else if (x < 0x10000) be(0xcd, x, 2);
          else if (x < 0x100000000) be(0xce, x, 4); else be(0xcf, x, 8);
        } else if (x >= -32) u8(0x100 + x);
        else { const buf = new Uint8Array(9); buf[0] = 0xd3; new DataView(buf.buffer).setBigInt64(1, BigInt(x)); push(buf); }
      } else { const buf = new Uint8Array(9); buf[0] = 0xcb; new DataView(buf.buffer).setFloat64(1, x); push(buf); }
    } else if (typeof x === "bigint") { const buf = new Uint8Array(9); buf[0] = 0xd3; new DataView(buf.buffer).setBigInt64(1, x); push(buf); }
    else if (typeof x === "string") {
      const bytes = new TextEncoder().encode(x);
      length(bytes.length, 0xa0, 31, 0xd9, 0xda, 0xdb); push(bytes);
    } else if (x instanceof Raw) push(x.bytes);
    else if (x instanceof Uint8Array) { length(x.length, null, 0, 0xc4, 0xc5, 0xc6); push(x); }
    else if (x instanceof Ext) {
      const n = x.bytes.length;
      const fixed = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 }[n];
      if (fixed) u8(fixed); else length(n, null, 0, 0xc7, 0xc8, 0xc9);
      u8(x.type & 0xff); push(x.bytes);
    } else if (Array.isArray(x)) { length(x.length, 0x90, 15, null, 0xdc, 0xdd); x.forEach(write); }
    else if (typeof x === "object") {
      const entries = Object.entries(x).filter(([, v]) => v !== undefined);
      length(entries.length, 0x80, 15, null, 0xde, 0xdf);
      for (const [k, v] of entries) { write(k); write(v); }
    } else throw new TypeError(`msgpack: cannot encode ${typeof x}`);
  };
  write(value);
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}
