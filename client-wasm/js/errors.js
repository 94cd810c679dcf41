// The error class of every rejection and throw of the client, so that `instanceof SssError`
// works; the package exports it with `isSssError` (client-wasm/js/client.js).

export class SssError extends Error {
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.name = "SssError";
    this.code = code;
    this.reason = reason;
  }
}

// `instanceof` fails across two copies of the package (two bundles, the web and the Node
// entry in one process): the name and a string code identify the error there.
export function isSssError(e) {
  return e instanceof SssError || (e instanceof Error && e.name === "SssError" && typeof e.code === "string");
}
