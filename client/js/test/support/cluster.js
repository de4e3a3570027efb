// The real cluster of the live tests: STATEROOM_CLUSTER names its cluster.json (as
// `stateroom up` writes it; tests/test_js_sdk.py starts one). Without it the live tests
// skip and say how to run them. Not a test file itself.
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { AuthClient } from "../../src/index.js";

const path = process.env.STATEROOM_CLUSTER;

/** `{auth_url, servers: [{id, ws_url, pid}]}`, or null without STATEROOM_CLUSTER. */
export const cluster = path ? JSON.parse(readFileSync(path, "utf8")) : null;

export const urls = () => cluster.servers.map((s) => s.ws_url);

/** A test against the cluster; skipped (saying why) when there is none. */
export function liveTest(name, fn, options = {}) {
  if (cluster === null) {
    return test(name, { skip: "no cluster: set STATEROOM_CLUSTER=cluster.json (pytest tests/test_js_sdk.py does)" }, () => {});
  }
  return test(name, { timeout: 60000, ...options }, fn);
}

export const auth = () => new AuthClient(cluster.auth_url);

/** The cluster.json server a connection URL belongs to (by host and port). */
export function serverOf(url) {
  const host = new URL(url).host;
  return cluster.servers.find((s) => new URL(s.ws_url).host === host);
}

let counter = 0;
/** A room name of its own for each test (rooms are forgotten once empty). */
export const roomName = (prefix) => `${prefix}-${process.pid}-${Date.now().toString(36)}-${++counter}`;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function until(predicate, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}
