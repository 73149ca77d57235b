// Compares passwords against bcrypt hashes off the main thread: bcrypt is slow on purpose, and on
// the event loop every failed login would hold up every other request. Messages (see
// src/auth/password-checks.ts):
//   in:  { op: "init", bcrypt: URL of the bcryptjs module } first, then
//        { op: "compare", id, secret, hash }
//   out: { op: "ready" } | { op: "init-failed", message } after init,
//        { op: "result", id, ok } | { op: "error", id, message } per compare
// bcryptjs arrives as an absolute URL resolved by the main thread: on Node this module runs from a
// data: URL (its types stripped), where a bare `import "bcryptjs"` cannot be resolved.
import { setPriority } from "node:os";

const PASSWORD_WORKER_NICE = 10;

// Below the serving thread's CPU priority: when both want the same core, requests come first and
// password checks wait (on Linux, priority 0 names the calling thread only). Best effort: a
// platform that refuses simply runs the checks at normal priority.
try {
  setPriority(PASSWORD_WORKER_NICE);
} catch {
  // not permitted or not supported here
}

type Inbound = { op: "init"; bcrypt: string } | { op: "compare"; id: number; secret: string; hash: string };
type Bcrypt = { compareSync(secret: string, hash: string): boolean };

// A Web Worker's scope on every runtime (src/runtime/ provides it on Node).
const scope = globalThis as unknown as { postMessage(m: unknown): void; onmessage: ((e: { data: unknown }) => void) | null };
const post = (m: unknown) => scope.postMessage(m);
const listen = (fn: (msg: Inbound) => void) => (scope.onmessage = (e) => fn(e.data as Inbound));

let bcrypt: Promise<Bcrypt> | null = null;

listen((msg) => {
  if (msg.op === "init") {
    bcrypt = import(msg.bcrypt).then((m: { default?: Bcrypt } & Partial<Bcrypt>) => (m.default ?? (m as Bcrypt)));
    bcrypt.then(
      () => post({ op: "ready" }),
      (err: unknown) => post({ op: "init-failed", message: err instanceof Error ? err.message : String(err) }),
    );
    return;
  }
  const id = msg.id;
  if (!bcrypt) return post({ op: "error", id, message: "the password worker was not initialised" });
  // One compare at a time per worker (the main thread queues the rest, so its bounds hold), and
  // synchronously: blocking this thread is the point, and it spares the async version's yields.
  bcrypt
    .then((b) => b.compareSync(msg.secret, msg.hash))
    .then(
      (ok) => post({ op: "result", id, ok }),
      (err: unknown) => post({ op: "error", id, message: err instanceof Error ? err.message : String(err) }),
    );
});
