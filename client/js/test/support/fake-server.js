// A scripted room server on loopback for the RoomClient's pure tests: a real WebSocket
// server (the `ws` package) whose answers each test writes. Not a test file itself.
import { WebSocketServer } from "ws";

import { makeCodec } from "../../src/index.js";

const KNOWN = ["stateroom.v2.msgpack", "stateroom.v2.json", "stateroom.v1.msgpack", "stateroom.v1.json"];

/** A connection as a test sees it: the messages it got, and `send` in its codec. */
class FakeConnection {
  constructor(ws, codec, server) {
    this.ws = ws;
    this.codec = codec;
    this.server = server;
    this.received = [];
    this.waiters = [];
  }

  send(message) {
    if (this.ws.readyState === 1) this.ws.send(this.codec.encode(message));
  }

  close(code, reason = "") {
    this.ws.close(code, reason);
  }

  /** The next client message of type `t` (already received or to come). */
  next(t, timeoutMs = 3000) {
    const index = this.received.findIndex((m) => m.t === t && !m._taken);
    if (index >= 0) {
      this.received[index]._taken = true;
      return Promise.resolve(this.received[index]);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${t} message within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push({ t, resolve: (m) => (clearTimeout(timer), resolve(m)) });
    });
  }

  _got(message) {
    this.received.push(message);
    const index = this.waiters.findIndex((w) => w.t === message.t);
    if (index >= 0) {
      message._taken = true;
      this.waiters.splice(index, 1)[0].resolve(message);
    }
  }
}

/**
 * Start a fake: `onConnection(conn)` runs for every connection once its subprotocol is
 * known; `onMessage(conn, message)` for every client message. `protocols`: the
 * subprotocols it knows (default all four).
 */
export async function startFake({ onConnection = () => {}, onMessage = () => {}, protocols = KNOWN } = {}) {
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (offered) => [...offered].find((p) => protocols.includes(p)) ?? false,
  });
  await new Promise((resolve) => wss.once("listening", resolve));
  const server = {
    wss,
    connections: [],
    url: `ws://127.0.0.1:${wss.address().port}/v1/ws`,
    port: wss.address().port,
    async close() {
      for (const client of wss.clients) client.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };
  wss.on("connection", (ws) => {
    const [encoding, version] = ws.protocol ? [ws.protocol.split(".")[2], Number(ws.protocol.split(".")[1].slice(1))] : ["msgpack", 1];
    const conn = new FakeConnection(ws, makeCodec(encoding, version), server);
    server.connections.push(conn);
    ws.on("message", (data, isBinary) => {
      const message = conn.codec.decode(isBinary ? data : data.toString());
      conn._got(message);
      onMessage(conn, message);
    });
    onConnection(conn);
  });
  return server;
}

/** A welcome for `join` (v of the connection), with `extra` fields. */
export function welcome(conn, extra = {}) {
  const message = {
    t: "welcome",
    v: conn.codec.version,
    room: "r",
    game: "arena",
    player_id: "p1",
    server: "fake-1",
    epoch: 1,
    tick: 0,
    tick_rate: 20,
    ack: 0,
    resumed: false,
    token_exp: Math.floor(Date.now() / 1000) + 600,
    ...extra,
  };
  if (conn.codec.version === 2 && message.options === undefined) message.options = {};
  return message;
}

/** A v1 state, or a v2 state whose shared stream is a generic keyframe (no `base`). */
export function state(conn, tick, ack, view = { tick }, extra = {}) {
  if (conn.codec.version === 1) return { t: "state", tick, state: view, ack, ...extra };
  return { t: "state", tick, shared: { tick, view }, ack, ...extra };
}

export const until = async (predicate, timeoutMs = 3000, what = "condition") => {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};
