/**
 * What the operator commands do (`stowage token create`, `user hash`,
 * `keys rotate`, `token revoke`). Printing is left to the entry point.
 */
import { stringify } from "yaml";
import type { TypedKv } from "../kv/kv.ts";
import { base64url } from "../util/encoding.ts";
import { hashSecret } from "./identities.ts";
import { CLOCK_SKEW_SECONDS } from "./jwt.ts";
import { KeyRing } from "./keys.ts";
import { RefreshTokens } from "./refresh.ts";

/** The operator's input to a command is unusable; the message says what to give instead. */
export class AdminInputError extends Error {
  override name = "AdminInputError";
}

export async function createRobotToken(name: string): Promise<{ secret: string; snippet: string }> {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const secret = base64url(bytes);
  const snippet = stringify({ robots: [{ name, secretHash: await hashSecret(secret) }] });
  return { secret, snippet };
}

/** The password is the first line of stdin, so `echo pw | stowage user hash` and typing it both work. */
export async function hashPassword(stdin: string): Promise<string> {
  const password = stdin.split(/\r?\n/)[0] ?? "";
  if (password === "") throw new AdminInputError("no password on standard input (e.g. printf '%s' \"$PASSWORD\" | stowage user hash)");
  return hashSecret(password);
}

export async function rotateKeys(kv: TypedKv, tokenTtlSeconds: number): Promise<{ kid: string; retired: string[] }> {
  return new KeyRing(kv, (tokenTtlSeconds + CLOCK_SKEW_SECONDS) * 1000).rotate();
}

export async function revokeRefreshTokens(kv: TypedKv, subject: string): Promise<number> {
  return new RefreshTokens(kv).revokeAll(subject);
}
