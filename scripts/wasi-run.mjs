// Runs a wasm32-wasip1 test binary under Node's WASI, with the proxy-wasm host imports stubbed
// (unit tests never reach them).
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';
const [file, ...args] = process.argv.slice(2);
const module = await WebAssembly.compile(await readFile(file));
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: process.env, preopens: { '/': '/' }, returnOnExit: true });
const imports = wasi.getImportObject();
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.kind === 'function' && !(imports[imp.module] && imports[imp.module][imp.name])) {
    imports[imp.module] ??= {};
    imports[imp.module][imp.name] = () => { throw new Error(`host call ${imp.module}.${imp.name} in a unit test`); };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// The test binary is a command (`_start`) that also exports the filter's `_initialize`.
const { _start, memory } = instance.exports;
process.exitCode = wasi.start({ exports: { _start, memory } });
