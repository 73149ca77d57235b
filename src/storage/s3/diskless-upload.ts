import { BufferFiller } from "../../util/buffers.ts";
import type { BlobUpload, PartialReader } from "../blob-store.ts";
import { type Multipart, PART_SIZE } from "./multipart.ts";

/**
 * Upload with no local disk (Deno Deploy): bytes are gathered into one part in
 * memory and each full part is sent. Memory per upload is bounded at
 * (PARTS_IN_FLIGHT_IN_MEMORY + 1) parts: a write that fills a part waits for a free
 * upload slot, which paces the download to S3. After a part failed, bytes are
 * dropped: the blob will not be cached, and the clients are served anyway.
 * There is no reader: the fetch serves followers from its memory window, and
 * those further behind from the store once committed.
 */
export class DisklessUpload implements BlobUpload {
  /** Gathers bytes into PART_SIZE buffers; a full one waits for a free slot, then goes up. */
  private readonly part: BufferFiller;
  private tail: Promise<void> = Promise.resolve();
  private settled = false;
  private committed = false;

  constructor(private readonly multipart: Multipart) {
    this.part = new BufferFiller(PART_SIZE, () => multipart.partBuffer(), (full) => this.sendPart(full));
  }

  write(chunk: Uint8Array): Promise<void> {
    // Chained, so bytes land in call order even while a full part waits for a slot.
    this.tail = this.tail.then(() => this.append(chunk));
    return this.tail;
  }

  private async append(chunk: Uint8Array): Promise<void> {
    if (this.multipart.failure !== null) return;
    await this.part.push(chunk);
  }

  private async sendPart(bytes: Uint8Array): Promise<void> {
    await this.multipart.untilSlot();
    this.multipart.add(async () => bytes);
  }

  readonly spoolPath = null;

  openReader(): Promise<PartialReader | null> {
    return Promise.resolve(null);
  }

  async commit(): Promise<void> {
    if (this.settled) throw new Error("upload already committed or aborted");
    this.settled = true;
    try {
      await this.tail;
      if (this.multipart.failure !== null) throw this.multipart.failure;
      const last = this.part.takePartial();
      if (this.multipart.partCount === 0) {
        await this.multipart.put(last ?? new Uint8Array(0));
      } else {
        if (last) await this.sendPart(last);
        await this.multipart.complete();
      }
    } catch (err) {
      await this.multipart.abort();
      throw err;
    } finally {
      this.part.release();
    }
    this.committed = true;
  }

  async abort(): Promise<void> {
    if (this.committed) return;
    this.settled = true;
    this.part.release();
    await this.multipart.abort();
  }
}
