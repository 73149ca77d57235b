// The JSON a Docker-v2 token service answers with (the distribution token spec, and the OAuth2
// form some services use): which token to send, and for how long it may be reused.
import { z } from "zod";

/** Token services that omit expires_in mean 60 s (Docker token spec). */
export const DEFAULT_TOKEN_SECONDS = 60;
/** A token is reused at most this long, whatever the token service says. */
export const MAX_TOKEN_SECONDS = 86_400;

// Lenient field by field: a good token next to a malformed field is still a good token, and a
// lifetime out of spec means the default (a shorter reuse costs at most one more token request).
const TokenResponse = z.object({
  token: z.string().optional().catch(undefined),
  access_token: z.string().optional().catch(undefined),
  expires_in: z.number().positive().optional().catch(undefined),
});

export type IssuedToken = { token: string; seconds: number };

/**
 * The token in a token service's parsed JSON answer, and how long to reuse it; null when the
 * answer carries none. `token` wins over the OAuth2 `access_token` (Docker Hub sends both).
 */
export function issuedToken(body: unknown): IssuedToken | null {
  const parsed = TokenResponse.safeParse(body);
  if (!parsed.success) return null;
  const token = parsed.data.token || parsed.data.access_token;
  if (!token) return null;
  return { token, seconds: Math.min(parsed.data.expires_in ?? DEFAULT_TOKEN_SECONDS, MAX_TOKEN_SECONDS) };
}
