// A stand-in arena server that costs little: to measure the load generator's own ceiling
// (`bench/arena.py --standin`), at loads the real room server cannot serve yet.
//
// It speaks what the load generator uses of protocol 1 over msgpack (join -> welcome, input,
// state once per tick with the player's ack; docs/protocol.md), with the arena's state shape
// (players {name, x, y, score, inputs}, 8 pickups) so that the bytes per state match the real
// server's. Rooms tick at 20 Hz; each tick's state is encoded once per room, and each player's
// frame is the shared part plus its own `ack` (written with writev). No auth (the token is not
// checked), no durability, no limits: it is not a server, only the other end of a socket.
//
// Run: node standin.mjs --port P   (prints {"event":"listening","port":P} when ready)

import { createHash } from "node:crypto";
import net from "node:net";
import { parseArgs } from "node:util";

import { msgpack } from "./wsclient.mjs";

const { values: opt } = parseArgs({
  options: { port: { type: "string", default: "0" }, host: { type: "string", default: "127.0.0.1" } },
});
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const TICK_MS = 50;
const encoder = new msgpack.Encoder();
const decoder = new msgpack.Decoder();
const enc = (v) => Buffer.from(encoder.encode(v));
const K_ACK = enc("ack");
const rooms = new Map();
let nextId = 1;

function frameHeader(len) {
  if (len < 126) return Buffer.from([0x82, len]);
  if (len < 65536) return Buffer.from([0x82, 126, len >> 8, len & 0xff]);
  const h = Buffer.alloc(10);
  h[0] = 0x82;
  h[1] = 127;
  h.writeBigUInt64BE(BigInt(len), 2);
  return h;
}

function sendMessage(sock, parts) {
  let len = 0;
  for (const p of parts) len += p.length;
  sock.cork();
  sock.write(frameHeader(len));
  for (const p of parts) sock.write(p);
  sock.uncork();
}

class Conn {
  constructor(sock) {
    this.sock = sock;
    this.hs = Buffer.alloc(0);
    this.open = false;
    this.buf = Buffer.alloc(0);
    this.player = null;
    sock.setNoDelay(true);
    sock.on("data", (d) => this.onData(d));
    sock.on("error", () => {});
    sock.on("close", () => this.leave());
  }

  onData(d) {
    if (!this.open) {
      this.hs = Buffer.concat([this.hs, d]);
      const end = this.hs.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = this.hs.subarray(0, end).toString("latin1");
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? "";
      const proto = /sec-websocket-protocol:\s*([^\r\n,]+)/i.exec(head)?.[1]?.trim() ?? "";
      this.version = proto.startsWith("stateroom.v2") ? 2 : 1;
      const accept = createHash("sha1").update(key + GUID).digest("base64");
      this.sock.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: ${proto}\r\n\r\n`,
      );
      this.open = true;
      d = this.hs.subarray(end + 4);
      this.hs = null;
    }
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      const masked = (b[1] & 0x80) !== 0;
      const total = off + (masked ? 4 : 0) + len;
      if (b.length < total) return;
      const payload = Buffer.from(b.subarray(off + (masked ? 4 : 0), total));
      if (masked) for (let i = 0; i < len; i++) payload[i] ^= b[off + (i & 3)];
      this.buf = b.subarray(total);
      const opcode = b[0] & 0x0f;
      if (opcode === 0x8) {
        this.sock.end();
        return;
      }
      if (opcode === 0x2) this.onMessage(decoder.decode(payload));
    }
  }

  onMessage(msg) {
    if (msg.t === "join" && !this.player) {
      let room = rooms.get(msg.room);
      if (!room) {
        room = { name: msg.room, tick: 0, players: new Map() };
        rooms.set(msg.room, room);
      }
      const id = `g_standin${nextId++}`;
      this.player = { id, conn: this, room, seq: 0, x: 32, y: 16, dx: 0, dy: 0, score: 0, inputs: 0 };
      room.players.set(id, this.player);
      const welcome = {
        t: "welcome", v: this.version, room: room.name, game: "arena", player_id: id,
        server: "standin", epoch: 1, tick: room.tick, tick_rate: 20, ack: 0, resumed: false,
        token_exp: Math.floor(Date.now() / 1000) + 3600,
      }; // prettier-ignore
      sendMessage(this.sock, [enc(welcome)]);
    } else if (msg.t === "input" && this.player) {
      const p = this.player;
      if (msg.seq === p.seq + 1) {
        p.seq = msg.seq;
        p.inputs += 1;
        p.dx = Number(msg.data?.dx) || 0;
        p.dy = Number(msg.data?.dy) || 0;
      }
    }
  }

  leave() {
    if (this.player) this.player.room.players.delete(this.player.id);
    this.player = null;
  }
}

const round2 = (v) => Math.round(v * 100) / 100;

function tick() {
  for (const room of rooms.values()) {
    if (room.players.size === 0) continue;
    room.tick += 1;
    const players = {};
    for (const p of room.players.values()) {
      p.x = round2(Math.min(64, Math.max(0, p.x + p.dx * 0.6)));
      p.y = round2(Math.min(32, Math.max(0, p.y + p.dy * 0.6)));
      players[p.id] = { name: `lg-${p.id}`, x: p.x, y: p.y, score: p.score, inputs: p.inputs };
    }
    const pickups = Array.from({ length: 8 }, (_, i) => [round2(i * 7.3 + 0.25), round2(i * 3.1 + 0.5)]);
    // {t, tick, state, ack}: everything but the ack once per room, then each player's ack.
    const shared = Buffer.concat([
      Buffer.from([0x84]),
      enc("t"),
      enc("state"),
      enc("tick"),
      enc(room.tick),
      enc("state"),
      enc({ w: 64, h: 32, players, pickups }),
      K_ACK,
    ]);
    for (const p of room.players.values()) sendMessage(p.conn.sock, [shared, enc(p.seq)]);
  }
}

const server = net.createServer((sock) => new Conn(sock));
server.listen(Number(opt.port), opt.host, () => {
  setInterval(tick, TICK_MS);
  process.stdout.write(JSON.stringify({ event: "listening", port: server.address().port }) + "\n");
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
