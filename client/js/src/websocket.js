/**
 * Which WebSocket to use: the platform's where there is one (browsers, Deno, Bun, Node
 * >= 22), else the `ws` package (Node 20). `ws` is imported lazily, only when needed, so
 * a browser never loads it and needs no import map entry for it.
 */

let fromPackage = null;

/** The `ws` package's constructor once it was loaded here (it takes a third options
 * argument the platform WebSocket does not). */
export function isWsPackage(ctor) {
  return fromPackage !== null && ctor === fromPackage;
}

export async function resolveWebSocket() {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  if (fromPackage === null) {
    let module;
    try {
      module = await import("ws");
    } catch (error) {
      throw new Error(
        "no WebSocket: this runtime has no global WebSocket and the 'ws' package is not installed (npm install ws)",
        { cause: error },
      );
    }
    fromPackage = module.WebSocket ?? module.default;
  }
  return fromPackage;
}
