// Moved to src/util/buffers.ts; kept until the last importer has switched.
export { unzeroedBytes } from "./util/buffers.ts";
