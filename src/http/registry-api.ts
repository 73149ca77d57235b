import { z } from "zod";
import type { App } from "./app.ts";
import type { FetchSource } from "../cache/fetch-source.ts";
import { registryErrorFor, UnusableUpstreamReply } from "../cache/registry-error-for.ts";
import type { Logger } from "../log.ts";
import { RegistryError } from "../registry/errors.ts";
import { OCI_INDEX } from "../registry/media-types.ts";
import { nextPageLink, nextPageQuery, pageOfTags } from "../registry/pagination.ts";
import { filterReferrers, referrersIndex } from "../registry/referrers.ts";
import { contentRange } from "../registry/range.ts";
import { parseDigest, parseReference } from "../registry/reference.ts";
import { offlineError, UpstreamError } from "../upstream/upstream-error.ts";
import { readLimited } from "../util/streams.ts";
import { API_VERSION_HEADER, jsonResponse } from "./responses.ts";
import { resolveTarget } from "../upstream/target.ts";
import { parseJsonBytes } from "../util/encoding.ts";

type Method = "GET" | "HEAD";

/** The distribution API is read-only here; say so in the protocol's terms. */
export function readOnly(method: string): RegistryError {
  return new RegistryError(
    "UNSUPPORTED",
    `${method} is not supported: Stowage is a read-only pull-through cache; push to the upstream registry instead`,
  );
}

function sourceFor(app: App, name: string, url: URL): FetchSource {
  const target = resolveTarget(app.settings.upstreams, app.settings.defaultUpstream, name, url.searchParams.get("ns"));
  const client = app.clients.get(target.upstream.name);
  if (!client) throw new Error(`no client for upstream ${target.upstream.name}`);
  return { client, repo: target.repo };
}

export async function getManifest(app: App, name: string, reference: string, method: Method, url: URL, log: Logger): Promise<Response> {
  const source = sourceFor(app, name, url);
  const ref = parseReference(reference);
  if (!ref) {
    // A malformed digest is the client's mistake (400); a name that cannot be a tag simply names no
    // manifest, which the distribution spec's conformance tests expect as 404 MANIFEST_UNKNOWN.
    throw reference.includes(":")
      ? new RegistryError("DIGEST_INVALID", `invalid digest ${JSON.stringify(reference.slice(0, 200))}`)
      : new RegistryError("MANIFEST_UNKNOWN", `manifest unknown: ${JSON.stringify(reference.slice(0, 200))} is neither a valid tag nor a digest`);
  }
  const answer = await app.manifests.get(source, ref, log);
  // Bytes, not a stream: Node sends them with the head in one write (runtime/node.ts).
  return new Response(method === "HEAD" ? null : answer.bytes, {
    status: 200,
    headers: {
      ...API_VERSION_HEADER,
      "content-type": answer.mediaType,
      "content-length": String(answer.size),
      "docker-content-digest": answer.digest,
      etag: `"${answer.digest}"`,
      "x-stowage-cache": answer.source,
    },
  });
}

export async function getBlob(app: App, name: string, digestText: string, method: Method, req: Request, url: URL, log: Logger): Promise<Response> {
  const source = sourceFor(app, name, url);
  const digest = parseDigest(digestText);
  if (!digest) throw new RegistryError("DIGEST_INVALID", `invalid digest "${digestText}"`);
  const answer = await app.blobs.get(source, digest, method, req.headers.get("range"), log);
  const headers: Record<string, string> = {
    ...API_VERSION_HEADER,
    "content-type": "application/octet-stream",
    "docker-content-digest": digest,
    "accept-ranges": "bytes",
    etag: `"${digest}"`,
    "x-stowage-cache": answer.source,
  };
  if (answer.range && answer.size !== null) {
    headers["content-range"] = contentRange(answer.range, answer.size);
    headers["content-length"] = String(answer.range.end - answer.range.start + 1);
  } else if (answer.size !== null) {
    headers["content-length"] = String(answer.size);
  }
  return new Response(answer.body, { status: answer.status, headers });
}

const TagList = z.object({ name: z.string(), tags: z.array(z.string()).nullable() });

/**
 * A tag list is read whole (it is rewritten under the client's repository name), so it has a cap:
 * 4 MiB is some 100,000 tags. Beyond it the client is told to page; nothing is buffered without bound.
 */
export const MAX_TAG_LIST_BYTES = 4 * 1024 * 1024;

/**
 * Tag listing is passed through (it is a live view of the upstream), not cached; offline, it
 * is the tags the store holds for the repository.
 */
export async function listTags(app: App, name: string, url: URL, log: Logger): Promise<Response> {
  const source = sourceFor(app, name, url);
  if (source.client.upstream.offline) return listCachedTags(app, source, name, url);
  const query = new URLSearchParams();
  for (const key of ["n", "last"]) {
    const value = url.searchParams.get(key);
    if (value !== null) query.set(key, value);
  }
  const what = `tags of ${source.client.upstream.name}/${source.repo}`;
  let parsed: z.infer<typeof TagList>;
  let next: ReturnType<typeof nextPageQuery>;
  try {
    const reply = await source.client.tags(source.repo, query.size ? `?${query}` : "", log);
    const bytes = await source.client.readWithin(reply, () =>
      readLimited(reply.response, MAX_TAG_LIST_BYTES).catch((cause) => {
        if (cause instanceof UpstreamError) throw cause; // a stalled body is an outage, not a bad tag list
        throw new UpstreamError("unreachable", "the upstream connection broke while sending a tag list", { cause });
      })
    );
    if (bytes === null) {
      throw new RegistryError(
        "UNAVAILABLE",
        `${what}: the upstream's list is larger than ${MAX_TAG_LIST_BYTES / (1024 * 1024)} MiB, more than Stowage passes on in one response; ` +
          `ask for it in pages: ?n=1000, then ?n=1000&last=<the last tag of the previous page>`,
        { status: 502 },
      );
    }
    const result = TagList.safeParse(parseJsonBytes(bytes));
    if (!result.success) throw new UnusableUpstreamReply("it is not a tag list ({\"name\", \"tags\"} JSON)");
    parsed = result.data;
    next = nextPageQuery(reply.response.headers.get("link"));
  } catch (err) {
    throw registryErrorFor(err, "repository", what);
  }
  const response = jsonResponse({ name, tags: parsed.tags ?? [] });
  if (next) response.headers.set("link", nextPageLink(name, next, url.searchParams.get("ns")));
  return response;
}

async function listCachedTags(app: App, source: FetchSource, name: string, url: URL): Promise<Response> {
  const held = await app.manifests.cachedTags(source);
  if (held.length === 0) {
    const upstream = source.client.upstream.name;
    throw new RegistryError(
      "NAME_UNKNOWN",
      `repository ${upstream}/${source.repo} has no tags in the cache, and ${offlineError(upstream).message}: nothing is fetched; prefill or import it on the connected side`,
    );
  }
  const page = pageOfTags(held, url.searchParams.get("n"), url.searchParams.get("last"));
  const response = jsonResponse({ name, tags: page.tags });
  if (page.next) response.headers.set("link", nextPageLink(name, page.next, url.searchParams.get("ns")));
  return response;
}

/**
 * OCI 1.1 referrers of a manifest: every artifact whose subject it is, as an image index,
 * filtered by `?artifactType=` when given (and then said so in OCI-Filters-Applied).
 */
export async function getReferrers(app: App, name: string, digestText: string, method: Method, url: URL, log: Logger): Promise<Response> {
  const source = sourceFor(app, name, url);
  const subject = parseDigest(digestText);
  if (!subject) throw new RegistryError("DIGEST_INVALID", `invalid digest ${JSON.stringify(digestText.slice(0, 200))}`);
  const artifactType = url.searchParams.get("artifactType") || null;
  const answer = await app.referrers.get(source, subject, log);
  const body = referrersIndex(filterReferrers(answer.list, artifactType));
  const headers: Record<string, string> = {
    ...API_VERSION_HEADER,
    "content-type": OCI_INDEX,
    "content-length": String(body.byteLength),
    "x-stowage-cache": answer.source,
  };
  if (artifactType !== null) headers["oci-filters-applied"] = "artifactType";
  return new Response(method === "HEAD" ? null : body, { status: 200, headers });
}
