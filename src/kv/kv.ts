import type { z } from "zod";
import { kvKeys } from "./keys.ts";
import { keyId, RecentReads } from "./recent-reads.ts";

/** Key parts allowed by Deno KV (and the @deno/kv polyfill). */
export type KvKeyPart = string | number | bigint | boolean | Uint8Array;
export type KvKey = readonly KvKeyPart[];

/**
 * The subset of the Deno KV API that Stowage uses. `Deno.openKv()` and the
 * `@deno/kv` polyfill both satisfy it structurally, so the rest of the code
 * never knows which runtime it is on.
 */
export interface Kv {
  get<T = unknown>(key: KvKey): Promise<{ value: T | null; versionstamp: string | null }>;
  set(key: KvKey, value: unknown, options?: { expireIn?: number }): Promise<{ ok: true; versionstamp: string }>;
  delete(key: KvKey): Promise<void>;
  list<T = unknown>(selector: { prefix: KvKey }, options?: { limit?: number }): AsyncIterable<{ key: KvKey; value: T; versionstamp: string }>;
  atomic(): KvAtomic;
  close(): void;
}

export interface KvAtomic {
  check(...checks: Array<{ key: KvKey; versionstamp: string | null }>): KvAtomic;
  set(key: KvKey, value: unknown, options?: { expireIn?: number }): KvAtomic;
  delete(key: KvKey): KvAtomic;
  /** `versionstamp` is present when ok. */
  commit(): Promise<{ ok: boolean; versionstamp?: string }>;
}

/**
 * Typed access to KV records. Everything read back is validated with zod:
 * records written by an older Stowage, or damaged, are treated as absent
 * rather than trusted.
 */
export class TypedKv {
  private readonly recent: RecentReads;

  constructor(private readonly raw: Kv, opts: { recent?: RecentReads } = {}) {
    this.recent = opts.recent ?? new RecentReads();
  }

  async read<S extends z.ZodType>(key: KvKey, schema: S): Promise<z.infer<S> | null> {
    const entry = await this.raw.get(key);
    if (entry.value === null) return null;
    const parsed = schema.safeParse(entry.value);
    return parsed.success ? parsed.data : null;
  }

  /**
   * Like `read`, for the records every cached pull reads again: one read within the last second
   * answers (see kv/recent-reads.ts). Another instance's change shows within that second; this
   * process's own writes at once. Not for read-modify-write or for checks before a removal: those
   * use `read`. The value is shared between callers and must not be changed.
   */
  readRecent<S extends z.ZodType>(key: KvKey, schema: S): Promise<z.infer<S> | null> {
    return this.recent.read(keyId(key), schema, () => this.read(key, schema));
  }

  /** Like `read`, also returning the versionstamp for a later compare-and-set. */
  async readVersioned<S extends z.ZodType>(
    key: KvKey,
    schema: S,
  ): Promise<{ value: z.infer<S> | null; versionstamp: string | null }> {
    const entry = await this.raw.get(key);
    if (entry.value === null) return { value: null, versionstamp: entry.versionstamp };
    const parsed = schema.safeParse(entry.value);
    return { value: parsed.success ? parsed.data : null, versionstamp: entry.versionstamp };
  }

  /** `expireInMs` lets KV reclaim the record eventually; callers still check their own timestamps (KV expiry is lazy). */
  async write(key: KvKey, value: unknown, expireInMs?: number): Promise<void> {
    await this.changing(key, () => this.raw.set(key, value, expireInMs === undefined ? undefined : { expireIn: expireInMs }));
  }

  async remove(key: KvKey): Promise<void> {
    await this.changing(key, () => this.raw.delete(key));
  }

  /**
   * Compare-and-set: writes only if the record's versionstamp is still `expected`
   * (null: the record must be absent). The new versionstamp, or null if the record changed meanwhile.
   */
  async writeIfUnchanged(key: KvKey, expected: string | null, value: unknown, expireInMs?: number): Promise<string | null> {
    const result = await this.changing(key, () =>
      this.raw
        .atomic()
        .check({ key, versionstamp: expected })
        .set(key, value, expireInMs === undefined ? undefined : { expireIn: expireInMs })
        .commit()
    );
    return result.ok ? (result.versionstamp ?? null) : null;
  }

  /** Deletes only if the record's versionstamp is still `expected`; whether it did. */
  async removeIfUnchanged(key: KvKey, expected: string): Promise<boolean> {
    return (await this.changing(key, () => this.raw.atomic().check({ key, versionstamp: expected }).delete(key).commit())).ok;
  }

  /** The records under `prefix` that pass `schema` (others are skipped, as `read` treats them as absent). */
  async *list<S extends z.ZodType>(prefix: KvKey, schema: S): AsyncIterable<{ key: KvKey; value: z.infer<S> }> {
    for await (const entry of this.raw.list({ prefix })) {
      const parsed = schema.safeParse(entry.value);
      if (parsed.success) yield { key: entry.key, value: parsed.data };
    }
  }

  /** A change to `key`: what is remembered of it is forgotten as it starts and once it has landed (or failed). */
  private async changing<T>(key: KvKey, change: () => Promise<T>): Promise<T> {
    const id = keyId(key);
    this.recent.forget(id);
    try {
      return await change();
    } finally {
      this.recent.forget(id);
    }
  }

  async ping(): Promise<void> {
    await this.raw.get(kvKeys.ping());
  }
}
