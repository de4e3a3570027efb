// The examples of docs/browser.md are valid JavaScript modules (`node --check` on each
// js block and each module script of its html blocks), and the names they use exist.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import * as sdk from "../src/index.js";

const doc = readFileSync(new URL("../../../docs/browser.md", import.meta.url), "utf8");

function examples() {
  const out = [];
  for (const [, lang, body] of doc.matchAll(/```(js|html)\n([\s\S]*?)```/g)) {
    if (lang === "js") out.push(body);
    else for (const [, script] of body.matchAll(/<script type="module">([\s\S]*?)<\/script>/g)) out.push(script);
  }
  return out;
}

test("every example of docs/browser.md parses as a module", () => {
  const blocks = examples();
  assert.ok(blocks.length >= 8, `found ${blocks.length} examples`);
  const dir = mkdtempSync(join(tmpdir(), "stateroom-docs-"));
  try {
    blocks.forEach((body, i) => {
      const file = join(dir, `example-${i}.mjs`);
      writeFileSync(file, body);
      const result = spawnSync(process.execPath, ["--check", file], { encoding: "utf8" });
      assert.equal(result.status, 0, `example ${i} does not parse:\n${body}\n${result.stderr}`);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the SDK names the examples import exist", () => {
  for (const body of examples()) {
    for (const [, names] of body.matchAll(/import \{([^}]+)\} from "(?:\/sdk\/index\.js|@stateroom\/client)"/g)) {
      for (const name of names.split(",").map((n) => n.trim()).filter(Boolean)) assert.ok(name in sdk, name);
    }
  }
  for (const method of ["guest", "register", "login", "tokenSource", "quickJoin", "listRooms", "createPrivate", "privateRoom", "servers"]) {
    assert.equal(typeof sdk.AuthClient.prototype[method], "function", method);
  }
  for (const method of ["connect", "sendInput", "on", "nextState", "leave", "close", "ping"]) {
    assert.equal(typeof sdk.RoomClient.prototype[method], "function", method);
  }
});
