#!/usr/bin/env node
// Launcher for the `stowage` bin: runs the TypeScript entry point through tsx,
// since Node 20 cannot strip types itself.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const tsxCli = require.resolve("tsx/cli");
const entry = fileURLToPath(new URL("../src/main.ts", import.meta.url));
const child = spawn(process.execPath, [tsxCli, entry, ...process.argv.slice(2)], { stdio: "inherit" });
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => child.kill(sig));
child.on("exit", (code, signal) => (signal ? process.kill(process.pid, signal) : process.exit(code ?? 1)));
