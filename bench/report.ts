// The printed report: what each scenario does, then one table of every figure, a column per peer
// (Stowage on Node and on Deno, the distribution proxy, nginx proxy_cache), with the target each
// Stowage (Node) figure is held to, then the login storm, the air gap and the profile. Stdout only.
import { FS_PEERS, PEER_NAMES, S3_PEER, type PeerKind } from "./peers.ts";
import { reportRows, type Med, type Row } from "./report-rows.ts";
import { explanations, notes } from "./report-text.ts";
import type { Results } from "./results.ts";
import { printAirgap } from "./scenarios/airgap.ts";
import { printLoginStorm } from "./scenarios/login-storm.ts";

function median(xs: number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

type DataRow = Exclude<Row, { section: string } | { note: string }>;

/** Whether Stowage (Node) beats every other peer with a figure on this row; "" when not comparable. */
function ahead(row: DataRow, s: number, others: Array<[PeerKind, number]>): string {
  if (!row.ahead || !Number.isFinite(s)) return "";
  const measured = others.filter(([, v]) => Number.isFinite(v));
  if (!measured.length) return "";
  const behind = measured.filter(([, v]) => (row.ahead === "higher" ? s <= v : s >= v)).map(([k]) => PEER_NAMES[k]);
  return behind.length ? `NO (${behind.join(", ")})` : "yes";
}

export function printReport(r: Results, jsonPath: string): void {
  const values = (kind: PeerKind, key: string) =>
    [...(r.peers[kind] ?? []).map((m) => m?.[key]), ...(r.samples[kind]?.[key] ?? [])].filter((v): v is number => v !== undefined && Number.isFinite(v));
  const med: Med = (kind, key) => median(values(kind, key));
  const ran = new Set<string>(r.scenarios.map((s) => s.scenario));
  if (r.s3Skipped) ran.add("s3");
  if (Object.keys(r.samples).length) ran.add("startup");
  const rows = reportRows(r.blobBytes, r.burstImage, r.s3Skipped, ran);

  // A column for every filesystem peer that has any figure (or whose S3 twin has).
  const cols = FS_PEERS.filter((k) => r.peers[k] || r.samples[k] || (S3_PEER[k] && (r.peers[S3_PEER[k]!] || r.samples[S3_PEER[k]!])));
  console.log(explanations(r));
  if (r.rounds > 1) console.log(`Figures are medians of ${r.rounds} rounds (peer order alternating); ratios and targets use the medians.\n`);

  const header = ["scenario", ...cols.map((k) => PEER_NAMES[k]), "target (Stowage on Node)", "met?", "ahead?"];
  const targetCol = cols.length + 1;
  const cells: Array<string[] | string> = rows.map((row) => {
    if ("section" in row) return row.section;
    if ("note" in row) return row.note;
    const who = (k: PeerKind): PeerKind | null => (row.s3 ? (S3_PEER[k] ?? null) : k);
    const figure = (k: PeerKind) => {
      const w = who(k);
      return w ? med(w, row.key) : NaN;
    };
    const show = (v: number) => (Number.isFinite(v) ? row.fmt(v) : "—");
    const s = figure("stowage");
    const t = Number.isFinite(s) ? row.target?.(s, med) : undefined;
    const others = row.s3 || row.reference ? [] : (["distribution", "nginx"] as PeerKind[]).map((k): [PeerKind, number] => [k, figure(k)]);
    const met = t?.met === undefined || t.met === null ? "" : t.met ? "yes" : "NO";
    return [`  ${row.label}`, ...cols.map((k) => (who(k) ? show(figure(k)) : "")), t?.text ?? "", met, ahead(row, s, others)];
  });
  const tableRows = cells.filter((c): c is string[] => Array.isArray(c));
  const widths = header.map((h, i) => Math.max(h.length, ...tableRows.map((c) => (c[i] ?? "").length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 || i === targetCol ? x.padEnd(widths[i] ?? 0) : x.padStart(widths[i] ?? 0))).join(" | ");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  for (const c of cells) console.log(typeof c === "string" ? c : line(c));

  const judged = tableRows.filter((c) => c[targetCol + 1] === "yes" || c[targetCol + 1] === "NO");
  const missed = judged.filter((c) => c[targetCol + 1] === "NO").map((c) => (c[0] ?? "").trim());
  const compared = tableRows.filter((c) => c[targetCol + 2] === "yes" || (c[targetCol + 2] ?? "").startsWith("NO"));
  const behind = compared.filter((c) => (c[targetCol + 2] ?? "").startsWith("NO")).map((c) => (c[0] ?? "").trim());
  console.log("");
  console.log(`targets: ${judged.length - missed.length} of ${judged.length} met${missed.length ? `; missed: ${missed.join("; ")}` : ""}`);
  console.log(`ahead of both peers on ${compared.length - behind.length} of ${compared.length} rows compared${behind.length ? `; behind on: ${behind.join("; ")}` : ""}`);
  console.log("");
  for (const n of notes(r)) console.log(n);
  if (r.storm) {
    console.log("");
    printLoginStorm(r.storm);
  }
  if (r.airgap) {
    console.log("");
    printAirgap(r.airgap);
  }
  if (r.profile) {
    console.log("");
    for (const l of r.profile) console.log(l);
  }
  console.log("");
  console.log(`all figures, per round and per start: ${jsonPath}`);
}
