import { AdminInputError, createRobotToken, hashPassword, revokeRefreshTokens, rotateKeys } from "./auth/admin.ts";
import { parseCommand } from "./cli.ts";
import { ImageRefError } from "./registry/image-ref.ts";
import { ConfigError } from "./config/problems.ts";
import { DEFAULTS } from "./config/settings.ts";
import { createLogger } from "./log.ts";
import { currentRuntime } from "./runtime/current.ts";
import { startServer } from "./server.ts";
import { openStateKv, StartupError } from "./services.ts";
import { VERSION } from "./version.ts";

const runtime = await currentRuntime();

try {
  const command = parseCommand(runtime.args(), runtime.env(), runtime.readTextFile);
  switch (command.kind) {
    case "help":
      console.log(command.text);
      break;
    case "version":
      console.log(`stowage ${VERSION}`);
      break;
    case "token-create": {
      const { secret, snippet } = await createRobotToken(command.name);
      console.error(`Robot token for ${command.name}. The secret is shown only now; store it in your CI's secret store.`);
      console.error(`Clients sign in with username ${command.name} and this secret as the password.\n`);
      console.log(secret);
      console.error(`\nAdd this to the config file (robots:) and restart Stowage:\n`);
      console.error(snippet.trimEnd());
      break;
    }
    case "user-hash":
      console.log(await hashPassword(await runtime.readStdin()));
      break;
    case "keys-rotate": {
      const state = await openStateKv(command.config, runtime);
      try {
        const ttl = command.config.access?.tokenTtlSeconds ?? DEFAULTS.tokenTtlSeconds;
        const { kid, retired } = await rotateKeys(state.kv, ttl);
        console.log(`new signing key ${kid}; ${retired.length ? `retired ${retired.join(", ")}: tokens it signed stay valid until they expire (at most ${ttl}s)` : "there was no key before"}`);
      } finally {
        state.close();
      }
      break;
    }
    case "token-revoke": {
      const state = await openStateKv(command.config, runtime);
      try {
        const n = await revokeRefreshTokens(state.kv, command.name);
        console.log(`revoked ${n} refresh token${n === 1 ? "" : "s"} of ${command.name}; tokens already issued expire within the token lifetime`);
      } finally {
        state.close();
      }
      break;
    }
    case "prefill":
    case "export":
    case "import": {
      // Loaded only for these commands, so serve's start-up does not pay for them.
      const content = await import("./commands/content.ts");
      const code = command.kind === "prefill"
        ? await content.runPrefill(command, runtime)
        : command.kind === "export"
        ? await content.runExport(command, runtime)
        : await content.runImport(command, runtime);
      runtime.exit(code);
      break;
    }
    case "gc":
    case "purge": {
      const collect = await import("./commands/collect.ts");
      runtime.exit(await collect.runCollect(command, runtime));
      break;
    }
    case "serve": {
      const log = createLogger(command.config.logLevel, (line) => console.error(line));
      const server = await startServer(command.config, runtime, log);
      let stopping = false;
      const stop = () => {
        if (stopping) return;
        stopping = true;
        log.info("shutting down");
        server.close().then(() => runtime.exit(0), () => runtime.exit(1));
      };
      runtime.onSignal("SIGINT", stop);
      runtime.onSignal("SIGTERM", stop);
      break;
    }
  }
} catch (err) {
  if (err instanceof ConfigError || err instanceof StartupError || err instanceof AdminInputError || err instanceof ImageRefError) {
    console.error(`stowage: ${err.message}`);
    runtime.exit(2);
  }
  throw err;
}
