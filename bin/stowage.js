#!/usr/bin/env -S node --max-semi-space-size=2 --initial-old-space-size=64
// The `stowage` command on Node: Node 20 cannot load TypeScript itself, so
// register tsx in this process and run the entry point.
import { register } from "tsx/esm/api";

register();
await import("../src/main.ts");
