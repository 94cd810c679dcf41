
// The web entry only (`super-scaled-sockets`): the module is loaded by `init` first.

/** What `init` loads the module from: its URL (default: next to this file), a fetch
 *  `Response`, its bytes, or a compiled module. */
export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

/** Loads the WebAssembly module, once: await it before using `Client`. */
export default function init(
  module_or_path?: { module_or_path: InitInput | Promise<InitInput> } | InitInput | Promise<InitInput>,
): Promise<void>;

/** `init`, synchronously, from the module's bytes or a compiled module. */
export function initSync(
  module: { module: BufferSource | WebAssembly.Module } | BufferSource | WebAssembly.Module,
): void;
