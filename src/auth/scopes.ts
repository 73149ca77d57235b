/**
 * Docker token-auth scopes: `repository:<name>:<action>[,<action>]`.
 * Clients send them as repeated `scope` params, or several joined by spaces in
 * one param/form field; both shapes arrive here as a list of raw values. Pure.
 */
export type Scope = { type: string; name: string; actions: string[] };

export type ParsedScopes = { scopes: Scope[]; invalid: string[] };

// Distribution limits repository names to 255 characters; a scope is a little longer.
const MAX_SCOPE_LENGTH = 512;
const MAX_SCOPES = 64;
const TYPE = /^[a-z0-9]+(?:\([a-z0-9]+\))?$/;
const ACTION = /^(?:[a-z]+|\*)$/;

export function parseScopes(values: readonly string[]): ParsedScopes {
  const scopes: Scope[] = [];
  const invalid: string[] = [];
  for (const value of values) {
    for (const item of value.split(" ")) {
      if (item === "") continue;
      if (scopes.length + invalid.length >= MAX_SCOPES) {
        invalid.push("(too many scopes)");
        return { scopes, invalid };
      }
      const scope = parseScope(item);
      if (scope) merge(scopes, scope);
      else invalid.push(item.length > 80 ? `${item.slice(0, 77)}...` : item);
    }
  }
  return { scopes, invalid };
}

/** `type:name:actions`; the name is whatever lies between the first and the last colon. */
export function parseScope(text: string): Scope | null {
  if (text.length > MAX_SCOPE_LENGTH) return null;
  const first = text.indexOf(":");
  const last = text.lastIndexOf(":");
  if (first <= 0 || last === first) return null;
  // A resource class such as repository(plugin) is not something we serve.
  const type = text.slice(0, first);
  const name = text.slice(first + 1, last);
  const actions = text.slice(last + 1).split(",").filter((a) => a !== "");
  if (!TYPE.test(type) || name === "" || actions.length === 0 || !actions.every((a) => ACTION.test(a))) return null;
  return { type, name, actions: [...new Set(actions)] };
}

/** The same resource asked for twice (e.g. challenge scope + client scope) becomes one entry. */
function merge(into: Scope[], scope: Scope): void {
  const same = into.find((s) => s.type === scope.type && s.name === scope.name);
  if (!same) into.push(scope);
  else for (const a of scope.actions) if (!same.actions.includes(a)) same.actions.push(a);
}

export function formatScope(scope: Scope): string {
  return `${scope.type}:${scope.name}:${scope.actions.join(",")}`;
}
