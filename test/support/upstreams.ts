// Upstreams as configuration hands them to the rest of Stowage, for tests that build one
// without loading a configuration.
import type { Upstream } from "../../src/upstream/upstream.ts";

/** Docker Hub, as the default upstream is configured. */
export const DOCKER_HUB: Upstream = {
  name: "docker.io",
  url: "https://registry-1.docker.io",
  host: "registry-1.docker.io",
  aliases: ["docker.io", "index.docker.io", "registry-1.docker.io"],
  dockerHub: true,
  allowPrivateNetwork: false,
};
