/**
 * `npm run vendor`: copy the installed @msgpack/msgpack's ESM build and its LICENSE into
 * vendor/msgpack/, where browser pages load it through an import map. It is committed
 * so that `make run` serves the SDK on a machine without npm; test/vendor.test.js checks
 * it is byte-identical to the version package-lock.json installs.
 */

import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
export const installedDir = join(root, "node_modules", "@msgpack", "msgpack");
export const vendorDir = join(root, "vendor", "msgpack");

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? walk(join(dir, entry.name)) : [join(dir, entry.name)],
  );
}

/** The files vendored, relative to the package directory: LICENSE, package.json and
 * every .mjs of dist.esm/. */
export function vendoredFiles() {
  const esm = walk(join(installedDir, "dist.esm"))
    .filter((path) => path.endsWith(".mjs"))
    .map((path) => relative(installedDir, path));
  return ["LICENSE", "package.json", ...esm].sort();
}

export function vendor() {
  rmSync(vendorDir, { recursive: true, force: true });
  const files = vendoredFiles();
  for (const file of files) {
    mkdirSync(dirname(join(vendorDir, file)), { recursive: true });
    copyFileSync(join(installedDir, file), join(vendorDir, file));
  }
  return files;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const files = vendor();
  console.log(`vendored ${files.length} files of @msgpack/msgpack into ${relative(process.cwd(), vendorDir) || "."}`);
}
