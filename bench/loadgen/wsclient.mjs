// A minimal RFC 6455 client for the load generator: what a bench player needs, at the least
// CPU per byte received.
//
// - Every socket reads into ONE shared buffer (net `onread`): callbacks run one at a time,
//   so nothing is allocated per read.
// - A frame parser that copies a payload only when someone will read it: control frames,
//   messages that are not states (welcome, error, redirect: small), and states of a probe
//   (`keepStates`). A drainer's states are recognised by a 5-byte peek (fixmap, "t", a
//   5-letter string starting with "s": "state" is the only server message type that fits;
//   the server writes `t` first) and skipped without a copy.
// - Client frames are masked (RFC 6455 5.3) with a fresh key per frame; pings are answered
//   with a pong carrying the same data; a close frame is answered and its code reported.
// Not here (the server sends none of it): extensions, text frames, compression.

import { createHash, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

/**
 * Load an npm package from the node_modules of: $STATEROOM_LOADGEN_MODULES (bench/arena.py
 * sets it), bench/loadgen (`npm ci` here), or client/js (`make js-deps`).
 */
function load(name) {
  const bases = [
    process.env.STATEROOM_LOADGEN_MODULES,
    HERE,
    join(HERE, "..", "..", "client", "js"),
  ].filter(Boolean);
  for (const base of bases) {
    try {
      return createRequire(join(base, "package.json"))(name);
    } catch (err) {
      if (err.code !== "MODULE_NOT_FOUND") throw err;
    }
  }
  process.stderr.write(
    `loadgen: cannot find the npm package ${name}; run \`npm ci\` in bench/loadgen ` +
      "(bench/arena.py does it) or `make js-deps`\n",
  );
  process.exit(3);
}

export const msgpack = load("@msgpack/msgpack");

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const READ = Buffer.allocUnsafe(256 * 1024);
const OP_CONT = 0x0;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;
const OP_BINARY = 0x2;

let maskState = randomBytes(4).readUInt32LE(0) | 1;
function nextMask() {
  // xorshift32: a fresh key per frame without a syscall per frame.
  let x = maskState;
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  maskState = x;
  return x >>> 0;
}

function concat(parts) {
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

export class WsConn {
  /**
   * @param {string} url ws://host:port/path
   * @param {object} o subprotocol, headers, keepStates, and callbacks onOpen(),
   *   onState(payload|null), onMessage(payload), onBytes(n), onClose(code, reason)
   */
  constructor(url, o) {
    const u = new URL(url);
    if (u.protocol !== "ws:") throw new Error(`only ws:// URLs are supported, got ${url}`);
    this.o = o;
    this.keepStates = Boolean(o.keepStates);
    this.phase = "handshake";
    this.hs = "";
    this.closeCode = 1006;
    this.closeReason = "connection lost";
    this.ended = false;
    // frame parser
    this.hdr = Buffer.alloc(14);
    this.hdrHave = 0;
    this.hdrNeed = 2;
    this.remaining = 0;
    this.inPayload = false;
    this.fin = false;
    this.opcode = 0;
    this.frameCtrl = false;
    this.ctrl = [];
    // message being received
    this.peek = Buffer.alloc(5);
    this.peekHave = 0;
    this.isState = false;
    this.collect = false;
    this.parts = [];

    const key = randomBytes(16).toString("base64");
    this.accept = createHash("sha1")
      .update(key + GUID)
      .digest("base64");
    const port = Number(u.port || 80);
    const lines = [
      `GET ${u.pathname || "/"}${u.search} HTTP/1.1`,
      `Host: ${u.hostname}:${port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${key}`,
      "Sec-WebSocket-Version: 13",
      `Sec-WebSocket-Protocol: ${o.subprotocol}`,
      ...Object.entries(o.headers || {}).map(([k, v]) => `${k}: ${v}`),
    ];
    const request = lines.join("\r\n") + "\r\n\r\n";
    const sock = net.connect({
      host: u.hostname,
      port,
      onread: { buffer: READ, callback: (n) => this.onRead(n) },
    });
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on("connect", () => sock.write(request));
    sock.on("error", (err) => {
      if (this.closeCode === 1006) this.closeReason = err.message;
    });
    sock.on("close", () => this.finish());
  }

  finish() {
    if (this.ended) return;
    this.ended = true;
    this.phase = "closed";
    this.o.onClose(this.closeCode, this.closeReason);
  }

  destroy() {
    this.sock.destroy();
  }

  /** Send one binary message (a Uint8Array; it is copied into the masked frame at once). */
  send(payload) {
    this.sendFrame(OP_BINARY, payload);
  }

  sendFrame(opcode, payload) {
    if (this.phase !== "open") return;
    const len = payload.length;
    const hlen = len < 126 ? 2 : len < 65536 ? 4 : 10;
    const frame = Buffer.allocUnsafe(hlen + 4 + len);
    frame[0] = 0x80 | opcode;
    if (len < 126) {
      frame[1] = 0x80 | len;
    } else if (len < 65536) {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(len, 2);
    } else {
      frame[1] = 0x80 | 127;
      frame.writeBigUInt64BE(BigInt(len), 2);
    }
    const m = nextMask();
    frame.writeUInt32BE(m, hlen);
    const k0 = m >>> 24;
    const k1 = (m >>> 16) & 0xff;
    const k2 = (m >>> 8) & 0xff;
    const k3 = m & 0xff;
    const base = hlen + 4;
    for (let i = 0; i < len; i++) {
      const k = (i & 3) === 0 ? k0 : (i & 3) === 1 ? k1 : (i & 3) === 2 ? k2 : k3;
      frame[base + i] = payload[i] ^ k;
    }
    this.sock.write(frame);
  }

  onRead(n) {
    this.o.onBytes(n);
    let off = 0;
    if (this.phase === "handshake") {
      off = this.readHandshake(n);
      if (off < 0) return;
    }
    const buf = READ;
    while (off < n && this.phase === "open") {
      if (!this.inPayload) {
        while (this.hdrHave < this.hdrNeed && off < n) this.hdr[this.hdrHave++] = buf[off++];
        if (this.hdrHave < this.hdrNeed) return;
        if (this.hdrNeed === 2) {
          const b1 = this.hdr[1];
          const len7 = b1 & 0x7f;
          const extra = (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (b1 & 0x80 ? 4 : 0);
          if (extra) {
            this.hdrNeed = 2 + extra;
            continue;
          }
        }
        this.beginFrame();
        this.hdrHave = 0;
        this.hdrNeed = 2;
        if (this.remaining === 0) {
          this.endFrame();
          continue;
        }
        this.inPayload = true;
      }
      const take = Math.min(this.remaining, n - off);
      this.feed(buf, off, off + take);
      off += take;
      this.remaining -= take;
      if (this.remaining === 0) {
        this.inPayload = false;
        this.endFrame();
      }
    }
  }

  /** Returns where frames start in READ, or -1 while the response headers are incomplete. */
  readHandshake(n) {
    const before = this.hs.length;
    this.hs += READ.toString("latin1", 0, n);
    const end = this.hs.indexOf("\r\n\r\n");
    if (end < 0) {
      if (this.hs.length > 16384) this.fail(1002, "handshake response too long");
      return -1;
    }
    const [status, ...headers] = this.hs.slice(0, end).split("\r\n");
    const fields = {};
    for (const h of headers) {
      const i = h.indexOf(":");
      if (i > 0) fields[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
    }
    if (!/^HTTP\/1\.1 101/.test(status)) {
      this.fail(1006, `upgrade refused: ${status}`);
      return -1;
    }
    if (fields["sec-websocket-accept"] !== this.accept) {
      this.fail(1002, "bad Sec-WebSocket-Accept");
      return -1;
    }
    if (fields["sec-websocket-protocol"] !== this.o.subprotocol) {
      this.fail(1002, `server chose subprotocol ${fields["sec-websocket-protocol"]}`);
      return -1;
    }
    this.hs = "";
    this.phase = "open";
    this.o.onOpen();
    return end + 4 - before;
  }

  fail(code, reason) {
    this.closeCode = code;
    this.closeReason = reason;
    this.phase = "closed";
    this.sock.destroy();
  }

  beginFrame() {
    const h = this.hdr;
    this.fin = (h[0] & 0x80) !== 0;
    this.opcode = h[0] & 0x0f;
    if (h[1] & 0x80) {
      this.fail(1002, "the server masked a frame");
      return;
    }
    let len = h[1] & 0x7f;
    if (len === 126) len = h.readUInt16BE(2);
    else if (len === 127) len = Number(h.readBigUInt64BE(2));
    this.remaining = len;
    this.frameCtrl = this.opcode >= 0x8;
    if (this.frameCtrl) {
      this.ctrl = [];
    } else if (this.opcode !== OP_CONT) {
      this.peekHave = 0;
      this.isState = false;
      this.collect = false;
      this.parts = [];
    }
  }

  feed(buf, start, end) {
    if (this.frameCtrl) {
      this.ctrl.push(Buffer.from(buf.subarray(start, end)));
      return;
    }
    let i = start;
    if (this.peekHave < 5) {
      while (this.peekHave < 5 && i < end) this.peek[this.peekHave++] = buf[i++];
      if (this.peekHave === 5) {
        const p = this.peek;
        this.isState =
          (p[0] & 0xf0) === 0x80 && p[1] === 0xa1 && p[2] === 0x74 && p[3] === 0xa5 && p[4] === 0x73;
        this.collect = this.keepStates || !this.isState;
        if (this.collect) this.parts.push(Buffer.from(p));
      }
    }
    if (this.collect && i < end) this.parts.push(Buffer.from(buf.subarray(i, end)));
  }

  endFrame() {
    if (this.phase !== "open") return;
    if (this.frameCtrl) {
      const payload = concat(this.ctrl.length ? this.ctrl : [Buffer.alloc(0)]);
      if (this.opcode === OP_PING) {
        this.sendFrame(OP_PONG, payload);
      } else if (this.opcode === OP_CLOSE) {
        this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        this.closeReason = payload.subarray(2).toString("utf8");
        this.sendFrame(OP_CLOSE, payload.subarray(0, 2));
        this.phase = "closing";
        this.sock.end();
      }
      return;
    }
    if (!this.fin) return;
    if (this.isState) {
      this.o.onState(this.collect ? concat(this.parts) : null);
    } else {
      if (this.peekHave < 5) this.parts = [Buffer.from(this.peek.subarray(0, this.peekHave))];
      this.o.onMessage(concat(this.parts));
    }
  }
}
