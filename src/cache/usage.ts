import { kvKeys } from "../kv/keys.ts";
import type { KvKey, TypedKv } from "../kv/kv.ts";
import type { Digest } from "../registry/reference.ts";
import { UsageRecord } from "./records.ts";

/** What was pulled: a tag, a manifest (by digest, or the one a tag named) or a blob. */
export type UsageTarget =
  | { kind: "tag"; upstream: string; repo: string; tag: string }
  | { kind: "manifest"; upstream: string; repo: string; digest: Digest }
  | { kind: "blob"; digest: Digest };

export const DEFAULT_USAGE_FLUSH_MS = 5_000;

type Pending = { id: string; key: KvKey; lastPulledAt: number; pulls: number };

/**
 * Records when content was last pulled and how often, for expiry and size
 * limits. A pull costs no KV write: pulls are counted in memory and written
 * as one batch every `flushMs` (one read-modify-write per key pulled in that
 * time, however many pulls), and on close. A crash loses at most the last
 * batch, which only makes that content look a few seconds less recently
 * pulled.
 */
export class UsageRecorder {
  private pending = new Map<string, Pending>();
  private readonly flushMs: number;
  private readonly now: () => number;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(private readonly kv: TypedKv, opts: { flushMs?: number; now?: () => number } = {}) {
    this.flushMs = opts.flushMs ?? DEFAULT_USAGE_FLUSH_MS;
    this.now = opts.now ?? Date.now;
  }

  /** Counts a pull: called on every manifest and blob GET, so it allocates nothing for a target already pending but its id. */
  pulled(target: UsageTarget): void {
    const id = idOf(target);
    const at = this.now();
    const entry = this.pending.get(id);
    if (entry) {
      entry.pulls += 1;
      if (at > entry.lastPulledAt) entry.lastPulledAt = at;
    } else {
      this.pending.set(id, { id, key: keyOf(target), lastPulledAt: at, pulls: 1 });
    }
    this.schedule();
  }

  /** Writes what was counted so far; resolves once it is in KV (flushes never overlap). */
  flush(): Promise<void> {
    const next = this.flushing.then(() => this.write());
    this.flushing = next.catch(() => {});
    return next;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.flush();
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      // A KV hiccup costs usage precision, never a pull: the batch is retried with the next one.
      this.flush().catch(() => {});
    }, this.flushMs);
    // Pending usage must not keep a stopping process alive; close() writes it.
    (this.timer as { unref?: () => void }).unref?.();
  }

  private async write(): Promise<void> {
    const batch = this.pending;
    if (batch.size === 0) return;
    this.pending = new Map();
    const failed: Pending[] = [];
    for (const entry of batch.values()) {
      try {
        const current = await this.kv.read(entry.key, UsageRecord);
        const record: UsageRecord = {
          lastPulledAt: Math.max(current?.lastPulledAt ?? 0, entry.lastPulledAt),
          pulls: (current?.pulls ?? 0) + entry.pulls,
        };
        await this.kv.write(entry.key, record);
      } catch {
        failed.push(entry);
      }
    }
    if (failed.length > 0) {
      // Put back what could not be written, merged with what came in meanwhile.
      for (const entry of failed) {
        const now = this.pending.get(entry.id);
        if (now) {
          now.pulls += entry.pulls;
          now.lastPulledAt = Math.max(now.lastPulledAt, entry.lastPulledAt);
        } else this.pending.set(entry.id, entry);
      }
      this.schedule();
      throw new Error(`could not write ${failed.length} usage record(s) to the KV`);
    }
  }
}

/** The pending map's key: one string, no KV key or JSON built (names and digests never hold NUL). */
function idOf(t: UsageTarget): string {
  switch (t.kind) {
    case "tag":
      return `t\0${t.upstream}\0${t.repo}\0${t.tag}`;
    case "manifest":
      return `m\0${t.upstream}\0${t.repo}\0${t.digest}`;
    case "blob":
      return `b\0${t.digest}`;
  }
}

function keyOf(t: UsageTarget): KvKey {
  switch (t.kind) {
    case "tag":
      return kvKeys.usageTag(t.upstream, t.repo, t.tag);
    case "manifest":
      return kvKeys.usageManifest(t.upstream, t.repo, t.digest);
    case "blob":
      return kvKeys.usageBlob(t.digest);
  }
}
