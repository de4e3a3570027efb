// The SDK in a real browser, without a build step: Debian's chromium (driven by
// playwright-core, never a browser download) loads /sdk/index.js and the vendored
// msgpack through an import map, logs in, joins the cluster and plays, with the
// platform's WebSocket. A loopback server plays the login service's part of serving
// /sdk/ and /vendor/ and forwards /v1/ to the cluster's login service (same origin: no
// CORS needed). Chromium missing: skipped, saying how to install it.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer, request } from "node:http";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

import { cluster, liveTest, roomName, urls } from "../support/cluster.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".html": "text/html" };
const PAGE = `<!doctype html><meta charset="utf-8"><title>sdk</title>
<script type="importmap">{ "imports": { "@msgpack/msgpack": "/vendor/msgpack/dist.esm/index.mjs" } }</script>
<p>SDK test page</p>`;

function chromiumPath() {
  try {
    return execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim() || null;
  } catch {
    return null;
  }
}

async function serve(requested) {
  const auth = new URL(cluster.auth_url);
  const server = createServer(async (req, res) => {
    requested.push(req.url);
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    if (path.startsWith("/v1/")) {
      const upstream = request({ host: auth.hostname, port: auth.port, path: req.url, method: req.method, headers: { ...req.headers, host: auth.host } }, (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      });
      req.pipe(upstream);
      return;
    }
    const mounts = { "/sdk/": "src/", "/vendor/": "vendor/" };
    const mount = Object.keys(mounts).find((m) => path.startsWith(m));
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(PAGE);
      return;
    }
    const file = mount && normalize(join(root, mounts[mount], path.slice(mount.length)));
    if (!file || !file.startsWith(join(root, mounts[mount]))) {
      res.writeHead(404);
      res.end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

const chromium = cluster ? chromiumPath() : null;

liveTest(
  "in Chromium: import map, vendored msgpack, platform WebSocket, msgpack and JSON sessions",
  async (t) => {
    const { chromium: playwright } = await import("playwright-core");
    const requested = [];
    const server = await serve(requested);
    const browser = await playwright.launch({ executablePath: chromium, args: ["--no-sandbox"] });
    t.after(async () => {
      await browser.close();
      await new Promise((resolve) => server.close(resolve));
    });
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    const results = await page.evaluate(
      async ({ servers, room }) => {
        const sdk = await import("/sdk/index.js");
        const out = { platformWebSocket: (await sdk.resolveWebSocket()) === WebSocket, sessions: [] };
        const auth = new sdk.AuthClient(location.origin);
        for (const encoding of ["msgpack", "json"]) {
          const tokens = await auth.guest(`browser-${encoding}`);
          const client = new sdk.RoomClient({ urls: servers, room: `${room}-${encoding}`, token: auth.tokenSource(tokens), encoding });
          const welcome = await client.connect(10000);
          for (let i = 0; i < 20; i++) client.sendInput({ dx: 1, dy: i % 2 });
          const end = Date.now() + 5000;
          while (client.unacked && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
          const me = client.lastState.state.players[client.playerId];
          out.sessions.push({ encoding, version: welcome.version, acked: client.stats.acked, inputs: me.inputs, lost: client.stats.lost, big: sdk.encodeMsgpack(2 ** 32 + 5).length });
          await client.leave();
        }
        return out;
      },
      { servers: urls(), room: roomName("js-browser") },
    );
    assert.deepEqual(errors, []);
    assert.equal(results.platformWebSocket, true, "the browser's own WebSocket");
    for (const session of results.sessions) {
      assert.equal(session.version, 2);
      assert.equal(session.acked, 20, session.encoding);
      assert.equal(session.inputs, 20);
      assert.equal(session.lost, 0);
      assert.equal(session.big, 9, "2^32 + 5 as uint 64 in the browser too");
    }
    assert.ok(requested.includes("/vendor/msgpack/dist.esm/index.mjs"), "msgpack came from the vendored copy");
    assert.ok(!requested.some((url) => /(^|\/)ws(\/|$|\.)/.test(url) || url.includes("node_modules")), `no ws, no node_modules: ${requested}`);
  },
  chromium || !cluster ? {} : { skip: "Debian's chromium is not installed: apt-get install -y chromium (make system-deps does it as root)" },
);
