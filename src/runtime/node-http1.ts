/**
 * An HTTP/1.1 client for upstream requests on Node that reads response bodies straight into
 * batch buffers: each socket read lands in the free tail of the current 1 MiB batch (net's
 * `onread` with a buffer per read, TLS included), and full batches are handed on as they are.
 * node:http read into a fresh 64 KiB buffer per read, copied every body chunk once more in its
 * parser and again into a batch: about 1.6 s of main-thread CPU per GiB here, against 0.2 s for
 * reads into one reused buffer. Heads and the chunked coding are parsed strictly by
 * util/http1-response.ts; connections go only where the guard says and are kept alive per origin.
 * This file is the pool of connections; node-http1-connection.ts is one connection and
 * node-http1-body.ts one body read in place.
 */
import * as net from "node:net";
import type { PeerCertificate } from "node:tls";
import { isFieldValue, isToken } from "../util/http1-response.ts";
import { unbracketed } from "../util/ip.ts";
import { Connection, StaleConnection } from "./node-http1-connection.ts";
import type { Http1Response } from "./node-http1-connection.ts";
import type { AddressGuard } from "./runtime.ts";

export type { Http1Response } from "./node-http1-connection.ts";

/**
 * An idle connection is closed after this long, before a typical server's own idle timeout (5 s
 * for Node, 60-90 s for registries behind load balancers) would close it under a request.
 */
const IDLE_TIMEOUT_MS = 4_000;
/** Idle connections kept per origin. */
const MAX_IDLE_PER_ORIGIN = 16;
/** Origins whose TLS session is kept for resumption, as Node's https agent kept 100. */
const MAX_TLS_SESSIONS = 100;

type Origin = { tls: boolean; name: string; port: number; key: string };

/** Connections per origin, opened where the guard allows and kept alive between requests. */
export class Http1Client {
  private readonly idle = new Map<string, Connection[]>();
  private tls: Promise<typeof import("node:tls")> | null = null;
  /** The latest TLS session per origin: a new connection resumes it instead of a full handshake. */
  private readonly sessions = new Map<string, Buffer>();

  /** `extraCa`: certificates trusted besides Node's own (tests; operators use NODE_EXTRA_CA_CERTS). */
  constructor(
    private readonly guard: AddressGuard,
    private readonly extraCa: string[] = [],
  ) {}

  /**
   * Sends a request without a body; resolves once the response head is in. The signal cuts the
   * request off with its reason, before the head or later in the body. A reused connection the
   * server had closed is replaced once (GET and HEAD change nothing).
   */
  async request(url: URL, method: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Http1Response> {
    const origin = originOf(url);
    const head = requestHead(method, url, headers);
    for (let attempt = 0; ; attempt++) {
      const reused = this.takeIdle(origin.key);
      const conn = reused ?? (await this.connect(origin));
      try {
        return await conn.exchange(head, method, signal, !!reused);
      } catch (err) {
        if (err instanceof StaleConnection && attempt === 0) continue;
        throw err instanceof StaleConnection ? err.cause : err;
      }
    }
  }

  private takeIdle(key: string): Connection | null {
    const list = this.idle.get(key);
    while (list && list.length > 0) {
      const conn = list.pop()!; // the most recently used: least likely to have been closed by the server
      if (conn.takeFromIdle()) return conn;
    }
    return null;
  }

  private release(key: string, conn: Connection): void {
    const list = this.idle.get(key) ?? [];
    if (list.length >= MAX_IDLE_PER_ORIGIN) return conn.destroy();
    list.push(conn);
    this.idle.set(key, list);
    conn.idleFor(IDLE_TIMEOUT_MS, () => {
      const at = list.indexOf(conn);
      if (at !== -1) list.splice(at, 1);
      if (list.length === 0 && this.idle.get(key) === list) this.idle.delete(key);
    });
  }

  private async connect(origin: Origin): Promise<Connection> {
    // The guard gets the name from the URL (an IP literal too, which no DNS lookup would see) and
    // answers with the one address to connect to, so a DNS answer cannot change in between.
    const target = await this.guard(origin.name, origin.port);
    const conn = new Connection((conn) => this.release(origin.key, conn));
    const onread = { buffer: () => conn.nextReadBuffer(), callback: (n: number) => conn.onRead(n) };
    let socket: net.Socket;
    if (origin.tls) {
      const tls = await (this.tls ??= import("node:tls"));
      const name = origin.name;
      // SNI and the certificate check use the name in the URL (for an IP literal, no SNI and the
      // certificate must name the address), against the CAs Node trusts (NODE_EXTRA_CA_CERTS too).
      socket = tls.connect({
        host: target.address,
        port: origin.port,
        servername: net.isIP(name) ? "" : name,
        checkServerIdentity: (_host: string, cert: PeerCertificate) => tls.checkServerIdentity(name, cert),
        ALPNProtocols: ["http/1.1"],
        session: this.sessions.get(origin.key),
        ...(this.extraCa.length > 0 ? { ca: [...tls.rootCertificates, ...this.extraCa] } : {}),
        onread,
      } as import("node:tls").ConnectionOptions);
      socket.on("session", (session: Buffer) => {
        // One per origin: the map never grows beyond the upstreams (and their CDNs) in use.
        if (this.sessions.size >= MAX_TLS_SESSIONS && !this.sessions.has(origin.key)) this.sessions.delete(this.sessions.keys().next().value!);
        this.sessions.set(origin.key, session);
      });
    } else {
      socket = net.connect({ host: target.address, port: origin.port, onread } as net.NetConnectOpts);
    }
    conn.attach(socket);
    return conn;
  }
}

function originOf(url: URL): Origin {
  const tls = url.protocol === "https:";
  if (!tls && url.protocol !== "http:") throw new Error(`unsupported URL scheme ${url.protocol}`);
  const name = unbracketed(url.hostname);
  const port = Number(url.port) || (tls ? 443 : 80);
  return { tls, name, port, key: `${url.protocol}//${name}:${port}` };
}

/** The request head; a header Node's client would refuse (a bad name; CR, LF, NUL or a character beyond latin1 in a value) is refused here too. */
function requestHead(method: string, url: URL, headers: Record<string, string>): string {
  if (!isToken(method)) throw new TypeError(`invalid HTTP method ${JSON.stringify(method)}`);
  let head = `${method} ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  let connection = false;
  for (const [name, value] of Object.entries(headers)) {
    if (!isToken(name)) throw new TypeError(`invalid header name ${JSON.stringify(name)}`);
    if (!isFieldValue(value)) throw new TypeError(`invalid value for header ${name}`);
    const lower = name.toLowerCase();
    if (lower === "host") continue; // from the URL, always
    if (lower === "connection") connection = true;
    head += `${name}: ${value}\r\n`;
  }
  if (!connection) head += "connection: keep-alive\r\n";
  return head + "\r\n";
}
