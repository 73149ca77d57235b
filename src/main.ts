import { parseCommand } from "./cli.ts";
import { ConfigError } from "./config.ts";
import { createLogger } from "./log.ts";
import { currentRuntime } from "./runtime/runtime.ts";
import { StartupError, startServer } from "./server.ts";
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
  if (err instanceof ConfigError || err instanceof StartupError) {
    console.error(`stowage: ${err.message}`);
    runtime.exit(2);
  }
  throw err;
}
