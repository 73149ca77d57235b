/**
 * A small Prometheus registry: counters and gauges with labels, rendered in
 * the text exposition format (version 0.0.4). Pure: no I/O, no timers.
 */
export type Labels = Record<string, string>;

/**
 * Per label name, a function onto a closed set of values (e.g. methodLabel):
 * applied to every value before it picks a series, so callers cannot add
 * series from values outside it.
 */
export type LabelNormalizers = Record<string, (value: string) => string>;

type Kind = "counter" | "gauge";

class Family {
  readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string, readonly kind: Kind, private readonly normalizers: LabelNormalizers = {}) {}

  private normalize(labels: Labels): Labels {
    let out = labels;
    for (const [name, normalize] of Object.entries(this.normalizers)) {
      const value = labels[name];
      if (value === undefined) continue;
      const closed = normalize(value);
      if (closed !== value) out = { ...out, [name]: closed };
    }
    return out;
  }

  private entry(raw: Labels) {
    const labels = this.normalize(raw);
    const key = labelKey(labels);
    let e = this.values.get(key);
    if (!e) {
      e = { labels, value: 0 };
      this.values.set(key, e);
    }
    return e;
  }

  add(labels: Labels, delta: number): void {
    this.entry(labels).value += delta;
  }

  set(labels: Labels, value: number): void {
    this.entry(labels).value = value;
  }

  get(labels: Labels): number {
    return this.values.get(labelKey(this.normalize(labels)))?.value ?? 0;
  }
}

export class Counter {
  constructor(private readonly family: Family) {}
  inc(labels: Labels = {}, by = 1): void {
    if (by > 0) this.family.add(labels, by);
  }
  get(labels: Labels = {}): number {
    return this.family.get(labels);
  }
}

export class Gauge {
  constructor(private readonly family: Family, private readonly sample?: () => number) {}
  set(labels: Labels, value: number): void {
    this.family.set(labels, value);
  }
  add(labels: Labels, delta: number): void {
    this.family.add(labels, delta);
  }
  get(labels: Labels = {}): number {
    return this.sample ? this.sample() : this.family.get(labels);
  }
  /** For gauges read at scrape time. */
  refresh(): void {
    if (this.sample) this.family.set({}, this.sample());
  }
}

export class MetricsRegistry {
  private readonly families: Family[] = [];
  private readonly sampled: Gauge[] = [];

  counter(name: string, help: string, normalizers?: LabelNormalizers): Counter {
    return new Counter(this.family(name, help, "counter", normalizers));
  }

  gauge(name: string, help: string, sample?: () => number): Gauge {
    const gauge = new Gauge(this.family(name, help, "gauge"), sample);
    if (sample) this.sampled.push(gauge);
    return gauge;
  }

  render(): string {
    for (const g of this.sampled) g.refresh();
    const lines: string[] = [];
    for (const f of this.families) {
      lines.push(`# HELP ${f.name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`);
      lines.push(`# TYPE ${f.name} ${f.kind}`);
      for (const { labels, value } of f.values.values()) lines.push(`${f.name}${formatLabels(labels)} ${formatNumber(value)}`);
    }
    return lines.join("\n") + "\n";
  }

  private family(name: string, help: string, kind: Kind, normalizers?: LabelNormalizers): Family {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name)) throw new Error(`invalid metric name ${name}`);
    if (this.families.some((f) => f.name === name)) throw new Error(`metric ${name} registered twice`);
    const family = new Family(name, help, kind, normalizers);
    this.families.push(family);
    return family;
  }
}

function labelKey(labels: Labels): string {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}\u0000${labels[k]}`)
    .join("\u0001");
}

function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return "";
  const parts = keys.map((k) => `${k}="${(labels[k] ?? "").replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`);
  return `{${parts.join(",")}}`;
}

function formatNumber(n: number): string {
  if (Number.isNaN(n)) return "NaN";
  if (n === Infinity) return "+Inf";
  if (n === -Infinity) return "-Inf";
  return String(n);
}
