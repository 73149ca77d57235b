/** Structured logging: one JSON object a line on stderr, so operators can ship it as is. */
export type LogLevel = "debug" | "info" | "warn" | "error";
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger that adds `fields` (e.g. the request id) to every line. */
  child(fields: Record<string, unknown>): Logger;
  /**
   * This logger, and its children, also handing every warning and error (whatever the level
   * written) with all its fields to `observer`: the operator page's recent errors.
   */
  observing(observer: ProblemObserver): Logger;
}

export type ProblemObserver = (level: "warn" | "error", msg: string, fields: Record<string, unknown>) => void;

export type LogSink = (line: string) => void;

export function createLogger(level: LogLevel, sink: LogSink, base: Record<string, unknown> = {}): Logger {
  return new JsonLogger(RANK[level], sink, base, null, null);
}

/**
 * A child costs one small object (the server makes one per request): its fields are merged
 * into a line only when a line is written, which at the usual levels most requests never do.
 */
class JsonLogger implements Logger {
  constructor(
    private readonly min: number,
    private readonly sink: LogSink,
    private readonly base: Record<string, unknown>,
    private readonly own: Record<string, unknown> | null,
    private readonly observer: ProblemObserver | null,
  ) {}

  debug(msg: string, fields?: Record<string, unknown>): void {
    if (RANK.debug >= this.min) this.emit("debug", msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>): void {
    if (RANK.info >= this.min) this.emit("info", msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.observer?.("warn", msg, this.allFields(fields));
    if (RANK.warn >= this.min) this.emit("warn", msg, fields);
  }
  error(msg: string, fields?: Record<string, unknown>): void {
    this.observer?.("error", msg, this.allFields(fields));
    if (RANK.error >= this.min) this.emit("error", msg, fields);
  }

  child(fields: Record<string, unknown>): Logger {
    return new JsonLogger(this.min, this.sink, this.own ? { ...this.base, ...this.own } : this.base, fields, this.observer);
  }

  observing(observer: ProblemObserver): Logger {
    return new JsonLogger(this.min, this.sink, this.base, this.own, observer);
  }

  private allFields(fields: Record<string, unknown> | undefined): Record<string, unknown> {
    return { ...this.base, ...this.own, ...fields };
  }

  private emit(level: LogLevel, msg: string, fields: Record<string, unknown> | undefined): void {
    this.sink(JSON.stringify({ time: new Date().toISOString(), level, msg, ...this.allFields(fields) }, errorReplacer));
  }
}

/** Errors do not serialize with JSON.stringify; keep their message (and cause) only. */
function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    return value.cause instanceof Error ? `${value.message} (${value.cause.message})` : value.message;
  }
  return value;
}
