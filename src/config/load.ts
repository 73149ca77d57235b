/**
 * Stowage configuration: command-line flags > STOWAGE_* environment > config file
 * (YAML or JSON) > built-in defaults, each setting as the settings table defines it.
 *
 * Pure: the caller injects argv, the environment and a file reader, so every
 * path is testable without touching the disk.
 */
import { fileLayer } from "./file.ts";
import { layerFromRaw, readEnv, readFlags } from "./flags-env.ts";
import { addHtpasswdUsers } from "./htpasswd.ts";
import { checkAdmins, merge } from "./merge.ts";
import type { Config, ConfigSources, Layer } from "./types.ts";

export function loadConfig(src: ConfigSources): Config {
  const flags = readFlags(src.argv);
  const env = readEnv(src.env);
  const layers: Layer[] = [];
  const file = flags.config?.at(-1) ?? env.config?.at(-1);
  if (file !== undefined) layers.push(fileLayer(file.label, file.value, src));
  layers.push(layerFromRaw(env), layerFromRaw(flags));
  const config = merge(layers);
  // The htpasswd file of the highest source counts, read only once access control is known to be on.
  const htpasswd = layers.flatMap((layer) => layer.values.htpasswd ?? []).at(-1);
  if (config.access && htpasswd) addHtpasswdUsers(config.access, htpasswd, src);
  if (config.access) checkAdmins(config.access);
  return config;
}
