// vendor/msgpack/ (what browsers load, committed so that `make run` needs no npm) is
// byte-identical to the @msgpack/msgpack that package-lock.json installs.
import assert from "node:assert/strict";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";

import { installedDir, vendorDir, vendoredFiles } from "../scripts/vendor.js";

const walk = (dir) => readdirSync(dir).flatMap((name) => (statSync(join(dir, name)).isDirectory() ? walk(join(dir, name)) : [join(dir, name)]));

test("the vendored msgpack is the installed version, byte for byte", () => {
  const lock = JSON.parse(readFileSync(new URL("../package-lock.json", import.meta.url), "utf8"));
  const locked = lock.packages["node_modules/@msgpack/msgpack"].version;
  const installed = JSON.parse(readFileSync(join(installedDir, "package.json"), "utf8")).version;
  const vendored = JSON.parse(readFileSync(join(vendorDir, "package.json"), "utf8")).version;
  assert.equal(installed, locked, "node_modules is not what package-lock.json says: run npm ci");
  assert.equal(vendored, installed, "run `npm run vendor` and commit client/js/vendor/");
  const expected = vendoredFiles();
  assert.ok(expected.includes("LICENSE") && expected.includes("dist.esm/index.mjs"));
  assert.deepEqual(walk(vendorDir).map((p) => relative(vendorDir, p)).sort(), expected, "the same files");
  for (const file of expected) {
    assert.ok(readFileSync(join(vendorDir, file)).equals(readFileSync(join(installedDir, file))), `${file} differs: run npm run vendor`);
  }
});

test("the vendored build is self-contained ES modules (relative .mjs imports only)", () => {
  for (const file of vendoredFiles().filter((f) => f.endsWith(".mjs"))) {
    const source = readFileSync(join(vendorDir, file), "utf8");
    for (const [, specifier] of source.matchAll(/(?:import|export)[^"']*?from\s*["']([^"']+)["']/g)) {
      assert.match(specifier, /^\.\.?\/.*\.mjs$/, `${file} imports ${specifier}`);
    }
  }
});

test("the SDK's sources import only relative files, @msgpack/msgpack, and ws lazily", () => {
  const src = new URL("../src/", import.meta.url);
  for (const name of readdirSync(src)) {
    const source = readFileSync(new URL(name, src), "utf8");
    for (const [, specifier] of source.matchAll(/(?:^|\n)\s*(?:import|export)[^"'(]*?from\s*["']([^"']+)["']/g)) {
      assert.ok(specifier.startsWith("./") || specifier === "@msgpack/msgpack", `${name} imports ${specifier}`);
    }
    for (const [, specifier] of source.matchAll(/import\(\s*["']([^"']+)["']\s*\)/g)) {
      assert.equal(specifier, "ws", `${name} imports ${specifier} dynamically`);
    }
  }
});
