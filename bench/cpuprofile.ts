// Reads a V8 .cpuprofile (as node --cpu-prof or the inspector's Profiler.stop write it) and says where the samples landed: self time by
// function and by broad area (Stowage's code, a dependency, node internals, GC, idle).
import { readFile } from "node:fs/promises";

type ProfileNode = {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
};
type Profile = { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number };

export type ProfileSummary = {
  totalMs: number;
  byArea: Array<[string, number]>;
  topSelf: Array<[string, number]>;
};

function areaOf(url: string, name: string): string {
  if (name === "(idle)") return "idle";
  if (name === "(garbage collector)") return "GC";
  if (name === "(program)") return "V8/native (program)";
  if (url === "") return "native/builtins";
  if (url.startsWith("node:")) return "node internals";
  const dep = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (dep) return `dep ${dep[1]}`;
  // tsx runs src/ and workers/; the build bundles them into dist/.
  if (/\/(src|workers|dist)\//.test(url)) return "stowage src";
  return "other";
}

function label(frame: ProfileNode["callFrame"]): string {
  const name = frame.functionName || "(anonymous)";
  if (!frame.url) return name;
  // tsx's transpiled output does not keep line numbers, so project files are named without one.
  if (!frame.url.startsWith("node:")) return `${name} ${frame.url.split("/").slice(-2).join("/")}`;
  return `${name} ${frame.url}:${frame.lineNumber + 1}`;
}

export async function summarizeProfile(path: string, top = 15): Promise<ProfileSummary> {
  const p = JSON.parse(await readFile(path, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  // timeDeltas[i] is the gap before sample i; it is charged to the sample, as DevTools does.
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const byArea = new Map<string, number>();
  const byFn = new Map<string, number>();
  let total = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    total += us;
    const area = areaOf(node.callFrame.url, node.callFrame.functionName);
    byArea.set(area, (byArea.get(area) ?? 0) + us);
    if (area !== "idle") {
      const key = `${label(node.callFrame)}  [${area}]`;
      byFn.set(key, (byFn.get(key) ?? 0) + us);
    }
  }
  const ms = (entries: Iterable<[string, number]>) => [...entries].map(([k, v]): [string, number] => [k, v / 1000]).sort((a, b) => b[1] - a[1]);
  return { totalMs: total / 1000, byArea: ms(byArea), topSelf: ms(byFn).slice(0, top) };
}
