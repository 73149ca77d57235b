/** An upstream registry as the rest of Stowage sees it, after configuration has checked it. */

export type Credentials = { username: string; password: string };

export type Upstream = {
  name: string;
  url: string;
  host: string;
  aliases: string[];
  dockerHub: boolean;
  credentials?: Credentials;
  /**
   * Whether redirects and token realms of this upstream may lead to loopback, private,
   * link-local or unspecified addresses. Off unless the operator allows it, or the
   * upstream itself lives at such an address (a registry on the LAN).
   */
  allowPrivateNetwork: boolean;
  /**
   * Never contacted (--offline, or offline: true for this upstream): tags resolve to what is
   * stored, misses are 404 at once. Absent means online.
   */
  offline?: boolean;
};

/** `--resolve HOST:PORT:ADDRESS`: connect to ADDRESS whenever HOST:PORT is asked for (as curl does). */
export type ResolveOverride = { host: string; port: number; address: string };
