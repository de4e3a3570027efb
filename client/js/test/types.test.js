// index.d.ts type-checks and fits ordinary use: `tsc --noEmit` on test/types/usage.ts,
// which imports the package by its own name (the "exports" of package.json).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const require = createRequire(import.meta.url);

test("tsc --noEmit accepts a program written against index.d.ts", () => {
  const tsc = require.resolve("typescript/bin/tsc");
  const project = fileURLToPath(new URL("./types/tsconfig.json", import.meta.url));
  const result = spawnSync(process.execPath, [tsc, "-p", project], { encoding: "utf8", timeout: 120000 });
  assert.equal(result.status, 0, `tsc failed:\n${result.stdout}\n${result.stderr}`);
});

test("every export of src/index.js is declared in index.d.ts, and the other way round", async () => {
  const { readFileSync } = await import("node:fs");
  const declared = new Set(
    [...readFileSync(new URL("../index.d.ts", import.meta.url), "utf8").matchAll(/export declare (?:const|function|class) (\w+)/g)].map((m) => m[1]),
  );
  const runtime = Object.keys(await import("../src/index.js"));
  assert.deepEqual(runtime.filter((name) => !declared.has(name)), [], "exported but not declared");
  assert.deepEqual([...declared].filter((name) => !runtime.includes(name)), [], "declared but not exported");
});
