// The pure policies, with the Python SDK's numbers (tests/test_sdk_reauth.py and friends).
import assert from "node:assert/strict";
import { test } from "node:test";

import { RedirectPolicy, ServerRotation, backoffDelay, reauthDelay, reauthRetryDelay, redactUrl, refreshMargin } from "../src/index.js";

const approx = (actual, expected) => assert.ok(Math.abs(actual - expected) < 1e-9, `${actual} != ${expected}`);

test("backoff: uniform in [d/2, d], first retry within 50 ms, capped", () => {
  approx(backoffDelay(1, 50, 250, () => 0), 25);
  approx(backoffDelay(1, 50, 250, () => 1), 50);
  approx(backoffDelay(2, 50, 250, () => 1), 100);
  approx(backoffDelay(3, 50, 250, () => 0.5), 150);
  approx(backoffDelay(4, 50, 250, () => 1), 250);
  approx(backoffDelay(40, 50, 1000, () => 1), 1000);
  approx(backoffDelay(0, 50, 1000, () => 1), 50);
  for (let attempt = 1; attempt < 12; attempt++) {
    const d = Math.min(1000, 50 * 2 ** (attempt - 1));
    const wait = backoffDelay(attempt, 50, 1000);
    assert.ok(wait >= d / 2 && wait <= d, `attempt ${attempt}: ${wait}`);
  }
});

test("renewal time: the earlier of 80 % of the life and 60 s before expiry", () => {
  approx(reauthDelay(1600, 1000), 480);
  approx(reauthDelay(1200, 1000), 140);
  approx(reauthDelay(1100, 1000), 50);
  approx(reauthDelay(1010, 1000), 5);
  assert.equal(reauthDelay(1000, 1000), 0);
  assert.equal(reauthDelay(900, 1000), 0);
  // never twice within 5 s ...
  approx(reauthDelay(900, 1000, 1), 4);
  approx(reauthDelay(1600, 1000, 1), 480);
  approx(reauthDelay(1020, 1000, 0), 10);
  approx(reauthDelay(1012, 1000, 0), 6);
  approx(reauthDelay(1010, 1000, 0), 5);
  // ... unless that would let a short token run out: then half its life, at least 1 s
  approx(reauthDelay(1006, 1000, 0), 3);
  approx(reauthDelay(1003, 1000, 0), 1.5);
  approx(reauthDelay(1001, 1000, 0), 1);
  approx(reauthDelay(1001, 1000, 0.8), 0.5);
  approx(reauthRetryDelay(1, 1600, 1000), 1);
  approx(reauthRetryDelay(3, 1600, 1000), 4);
  approx(reauthRetryDelay(20, 1600, 1000), 60);
  approx(reauthRetryDelay(3, 1003, 1000), 1.5);
  approx(reauthRetryDelay(3, 1001, 1000), 1);
});

test("refresh margin: a quarter of the life, at least 90 s, at most 60 %", () => {
  approx(refreshMargin(600), 150);
  approx(refreshMargin(100), 60);
  approx(refreshMargin(3600), 900);
  approx(refreshMargin(8), 4.8);
  approx(refreshMargin(0), 60);
  for (const life of [8, 30, 120, 600, 3600]) {
    // a renewal (at reauthDelay) always finds the token due for a refresh
    assert.ok(life - reauthDelay(life, 0) <= refreshMargin(life) + 1e-9, `life ${life}`);
  }
});

test("redirects are followed only into the cluster", () => {
  const policy = new RedirectPolicy(["ws://10.0.0.1:8001/v1/ws", "wss://Play.Example.com/v1/ws"], ["*.rooms.example.net", "203.0.113.7", "[::1]"]);
  const ok = (url, current = "ws://10.0.0.1:8001/v1/ws") => assert.equal(policy.refusal(url, current), null, url);
  const refused = (url, why, current = "ws://10.0.0.1:8001/v1/ws") => assert.match(policy.refusal(url, current) ?? "", why, url);
  ok("ws://10.0.0.1:8002/v1/ws?placed=1"); // a known host, any port
  ok("wss://play.example.com./v1/ws", "wss://play.example.com/v1/ws");
  ok("ws://a.rooms.example.net:9000/v1/ws");
  ok("ws://203.0.113.7/v1/ws");
  ok("ws://[::1]:8001/v1/ws");
  refused("ws://rooms.example.net/v1/ws", /not a known server/); // the suffix itself is not below it
  refused("ws://evil.example.org/v1/ws", /not a known server/);
  refused("ws://10.0.0.1.evil.org/v1/ws", /not a known server/);
  refused("http://10.0.0.1:8002/", /scheme/);
  refused("ws://user:pw@10.0.0.1:8002/", /credentials/);
  refused("ws://@10.0.0.1:8002/", /credentials/);
  refused("ws://play.example.com/v1/ws", /downgrade/, "wss://play.example.com/v1/ws");
  refused("not a url", /unparseable/);
  refused(42, /unparseable/);
  assert.ok(policy.hostAllowed("x.y.rooms.example.net"));
  assert.ok(!policy.hostAllowed("example.com"));
});

test("redactUrl keeps scheme, host, port and path only", () => {
  assert.equal(redactUrl("ws://u:p@10.0.0.1:8002/v1/ws?token=secret#x"), "ws://10.0.0.1:8002/v1/ws?…");
  assert.equal(redactUrl("wss://h/v1/ws"), "wss://h/v1/ws");
  assert.match(redactUrl("::"), /unparseable URL of 2 characters/);
  assert.equal(redactUrl(`ws://h/${"a".repeat(300)}`).length, 200);
});

test("server rotation skips suspect servers, by host and port", () => {
  const urls = ["ws://a:1/v1/ws", "ws://b:2/v1/ws", "ws://c:3/v1/ws"];
  const rotation = new ServerRotation(urls, 0, 3000);
  assert.deepEqual([rotation.next(0), rotation.next(0), rotation.next(0), rotation.next(0)], [urls[0], urls[1], urls[2], urls[0]]);
  rotation.suspect("ws://b:2/v1/ws?placed=1", 100); // the same server under another spelling
  assert.ok(rotation.isSuspect(urls[1], 3099));
  assert.ok(!rotation.isSuspect(urls[1], 3100));
  assert.deepEqual([rotation.next(200), rotation.next(200), rotation.next(200)], [urls[2], urls[0], urls[2]]);
  rotation.suspect(urls[0], 150);
  rotation.suspect(urls[2], 300);
  assert.ok(rotation.allSuspect(400));
  assert.equal(rotation.next(400), urls[1], "all suspect: the one whose suspicion ends first");
  rotation.clear(urls[0]);
  assert.equal(rotation.next(400), urls[0]);
  assert.throws(() => new ServerRotation([]), TypeError);
});
