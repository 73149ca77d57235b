/**
 * How long a record read from KV answers the same read again from memory. Within it, another
 * instance's change to the record is not seen yet; this instance's own writes are seen at once.
 */
export const RECENT_READ_MS = 1_000;

/** At most this many records are remembered; the oldest go first. */
export const RECENT_READ_LIMIT = 4_096;

type Remembered = { at: number; schema: unknown; value: unknown };

/**
 * Records read very recently, for the reads every cached pull repeats (a tag's digest, a
 * manifest's or blob's record, a repository's link). A KV read costs far more than its answer:
 * the @deno/kv polyfill on Node allocates some 50 KB of encoding garbage per read, two or three
 * per cached manifest, which at thousands of requests a second is most of the process's heap
 * growth and a good part of its CPU. A hot record is read once a second instead, and reads of a
 * record that arrive while it is being read wait for that one read.
 *
 * Only records that exist are remembered: an absent one is read again each time, so a record
 * another instance just wrote is never hidden. Every write or removal made through this process
 * forgets the key as it starts and again once it has landed, so a read that overlapped it is not
 * remembered.
 */
export class RecentReads {
  private readonly remembered = new Map<string, Remembered>();
  private readonly reading = new Map<string, { schema: unknown; read: Promise<unknown> }>();

  constructor(
    private readonly opts: { ms?: number; limit?: number; now?: () => number } = {},
  ) {}

  /** The remembered value of `id` for `schema` (the same key read under another schema is a miss), or the read's. */
  async read<T>(id: string, schema: unknown, load: () => Promise<T | null>): Promise<T | null> {
    const now = (this.opts.now ?? Date.now)();
    const hit = this.remembered.get(id);
    if (hit && hit.schema === schema && now - hit.at < (this.opts.ms ?? RECENT_READ_MS)) return hit.value as T;
    const pending = this.reading.get(id);
    if (pending && pending.schema === schema) return pending.read as Promise<T | null>;
    const read = load();
    const entry = { schema, read };
    this.reading.set(id, entry);
    try {
      const value = await read;
      // Forgotten meanwhile (a write through this process): the value may predate it.
      if (this.reading.get(id) === entry && value !== null) this.remember(id, { at: now, schema, value });
      return value;
    } finally {
      if (this.reading.get(id) === entry) this.reading.delete(id);
    }
  }

  /** Called as every write or removal of `id` starts and once it has landed, so this process reads its own writes. */
  forget(id: string): void {
    this.remembered.delete(id);
    this.reading.delete(id);
  }

  private remember(id: string, entry: Remembered): void {
    this.remembered.delete(id); // re-inserted last, so the Map's order stays oldest first
    this.remembered.set(id, entry);
    const limit = this.opts.limit ?? RECENT_READ_LIMIT;
    for (const oldest of this.remembered.keys()) {
      if (this.remembered.size <= limit) break;
      this.remembered.delete(oldest);
    }
  }
}

/** One string per key; Stowage's keys are all strings (kv/keys.ts), which NUL never occurs in. */
export function keyId(key: readonly unknown[]): string {
  return key.join("\u0000");
}
