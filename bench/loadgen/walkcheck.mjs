// For tests/test_bench_arena.py: reads JSON lines {"frame": hex, "me": id} on stdin and
// prints, for each, what a probe reads from it three ways (findState, walkState, a full
// msgpack decode), so the test can check that they agree on the server's real frames.

import { createInterface } from "node:readline";

import { findState, msgpackKey, walkState } from "./walk.mjs";
import { msgpack } from "./wsclient.mjs";

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const { frame, me } = JSON.parse(line);
  const b = Buffer.from(frame, "hex");
  const full = msgpack.decode(b);
  const mine = full.state && full.state.players ? full.state.players[me] : undefined;
  process.stdout.write(
    JSON.stringify({
      find: findState(b, Buffer.from(me), msgpackKey(me)),
      walk: walkState(b, Buffer.from(me)),
      full: { tick: full.tick, ack: full.ack, inputs: mine ? mine.inputs : null },
    }) + "\n",
  );
});
