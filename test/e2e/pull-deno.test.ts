// The same end-to-end pulls, with Stowage running on Deno (Deno.serve, Deno.openKv, Web Workers).
process.env.STOWAGE_E2E_RUNTIME = "deno";
await import("./pull.test.ts");
