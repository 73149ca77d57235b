import { kvKeys } from "../kv/keys.ts";
import type { TypedKv } from "../kv/kv.ts";
import type { Logger } from "../log.ts";
import type { Digest } from "../registry/reference.ts";
import type { FetchSource } from "./fetch-source.ts";
import { LinkRecord } from "./records.ts";

/*
 * Blob bytes are shared across repositories, but a repository may only see a
 * cached blob the upstream confirms it has: otherwise anyone could read a
 * private image's layers through a public repository by digest. A link
 * record says the upstream confirmed it for this repository.
 */

/** Whether the upstream already confirmed that this repository has the blob. */
export async function isLinked(kv: TypedKv, source: FetchSource, digest: Digest): Promise<boolean> {
  return (await kv.readRecent(kvKeys.link(source.client.upstream.name, source.repo, digest), LinkRecord)) !== null;
}

/**
 * Asks the upstream (HEAD) whether this repository has the blob and records
 * the link if so; a failed HEAD is thrown as `headFailed` makes it.
 */
export async function linkAfterHead(
  kv: TypedKv,
  source: FetchSource,
  digest: Digest,
  log: Logger,
  headFailed: (err: unknown) => unknown = (err) => err,
): Promise<void> {
  let response: Response;
  try {
    ({ response } = await source.client.blob(source.repo, digest, "HEAD", log));
  } catch (err) {
    throw headFailed(err);
  }
  await response.body?.cancel();
  await kv.write(kvKeys.link(source.client.upstream.name, source.repo, digest), { linkedAt: Date.now() });
}
