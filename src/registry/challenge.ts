// WWW-Authenticate challenges (RFC 7235 / RFC 9110 section 11).

export type Challenge = {
  /** Lowercased, e.g. "bearer", "basic". */
  scheme: string;
  /** Keys lowercased; the first occurrence of a repeated key wins. */
  params: Record<string, string>;
  /** Set when the challenge carries a token68 instead of auth-params (e.g. Negotiate). */
  token68?: string;
};

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_CHAR = /[A-Za-z0-9\-._~+/]/;

function isWhitespace(c: string | undefined): boolean {
  return c === " " || c === "\t";
}

class Scanner {
  pos = 0;
  constructor(readonly text: string) {}

  get done(): boolean {
    return this.pos >= this.text.length;
  }
  peek(offset = 0): string | undefined {
    return this.text[this.pos + offset];
  }
  skipWhitespace(): void {
    while (isWhitespace(this.peek())) this.pos++;
  }
  skipSeparators(): void {
    while (isWhitespace(this.peek()) || this.peek() === ",") this.pos++;
  }
  /** Reads 1*tchar; returns "" (without moving) when there is none. */
  token(): string {
    const start = this.pos;
    while (!this.done && TCHAR.test(this.text[this.pos]!)) this.pos++;
    return this.text.slice(start, this.pos);
  }
  /** Reads a quoted-string starting at '"'; null if it is never closed. */
  quoted(): string | null {
    let out = "";
    this.pos++; // opening quote
    while (!this.done) {
      const c = this.text[this.pos++]!;
      if (c === '"') return out;
      if (c === "\\" && !this.done) out += this.text[this.pos++]!;
      else out += c;
    }
    return null;
  }
  /** Unquoted values are read up to a comma or whitespace: some servers leave URLs unquoted. */
  bareValue(): string {
    const start = this.pos;
    while (!this.done && this.peek() !== "," && !isWhitespace(this.peek()) && this.peek() !== '"') this.pos++;
    return this.text.slice(start, this.pos);
  }
  /** Length of a token68 at the cursor if it is followed only by whitespace and then a comma or the end. */
  token68Length(): number {
    let i = this.pos;
    while (i < this.text.length && TOKEN68_CHAR.test(this.text[i]!)) i++;
    if (i === this.pos) return 0;
    while (this.text[i] === "=") i++;
    const end = i;
    while (isWhitespace(this.text[i])) i++;
    return i >= this.text.length || this.text[i] === "," ? end - this.pos : 0;
  }
  /** Skips a malformed list element: up to the next comma that is not inside a quoted string. */
  skipElement(): void {
    let inQuotes = false;
    while (!this.done) {
      const c = this.text[this.pos]!;
      if (!inQuotes && c === ",") return;
      if (c === '"') inQuotes = !inQuotes;
      else if (c === "\\" && inQuotes) this.pos++;
      this.pos++;
    }
  }
}

/**
 * Parses a WWW-Authenticate value. Commas separate both challenges and the
 * params of one challenge, so an element is a new challenge unless it is
 * `name=value` following a challenge that takes params. Never throws.
 */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const challenges: Challenge[] = [];
  const s = new Scanner(header);
  // The challenge that later `name=value` elements belong to, if any.
  let current: Challenge | null = null;

  while (true) {
    s.skipSeparators();
    if (s.done) break;
    const name = s.token();
    if (name === "") {
      s.skipElement();
      continue;
    }
    s.skipWhitespace();

    if (s.peek() === "=") {
      if (current === null) {
        s.skipElement();
        continue;
      }
      s.pos++;
      s.skipWhitespace();
      const value = s.peek() === '"' ? s.quoted() : s.bareValue();
      if (value === null) break; // unterminated quote swallowed the rest
      s.skipWhitespace();
      if (!s.done && s.peek() !== ",") {
        s.skipElement();
        continue;
      }
      const key = name.toLowerCase();
      if (!Object.hasOwn(current.params, key)) current.params[key] = value;
      continue;
    }

    // A scheme must be separated from what follows by whitespace or a comma.
    if (!s.done && s.peek() !== "," && !isWhitespace(header[s.pos - 1])) {
      current = null;
      s.skipElement();
      continue;
    }
    current = { scheme: name.toLowerCase(), params: Object.create(null) as Record<string, string> };
    challenges.push(current);
    const t68 = s.token68Length();
    if (t68 > 0) {
      current.token68 = header.slice(s.pos, s.pos + t68);
      s.pos += t68;
      current = null; // a token68 challenge takes no params
    }
  }
  // Plain objects for callers (null-prototype objects compare oddly in tests and logs).
  return challenges.map((c) => ({ ...c, params: { ...c.params } }));
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Control characters other than HTAB cannot appear in a header value, quoted or not.
const FORBIDDEN_IN_QUOTED = /[\u0000-\u0008\u000a-\u001f\u007f]/;

function quote(value: string): string {
  return `"${value.replace(/["\\]/g, "\\$&")}"`;
}

/** e.g. Bearer realm="https://x/token",service="x",scope="repository:a/b:pull" */
export function formatBearerChallenge(params: Record<string, string>): string {
  const parts = Object.entries(params).map(([key, value]) => {
    if (!TOKEN.test(key)) throw new TypeError(`invalid auth-param name: ${JSON.stringify(key)}`);
    if (FORBIDDEN_IN_QUOTED.test(value)) throw new TypeError(`control character in auth-param ${key}`);
    return `${key}=${quote(value)}`;
  });
  return parts.length === 0 ? "Bearer" : `Bearer ${parts.join(",")}`;
}
