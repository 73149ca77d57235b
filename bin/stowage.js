#!/usr/bin/env node
// The `stowage` command on Node: Node 20 cannot load TypeScript itself, so
// register tsx in this process and run the entry point.
import { register } from "tsx/esm/api";

register();
await import("../src/main.ts");
