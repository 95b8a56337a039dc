/**
 * Who is signed in, and how a page learns it.
 *
 * The token lives in memory and in `sessionStorage` (this tab only, gone
 * when it closes; a reload keeps it), never in `localStorage`, never in a
 * URL the server sees. It arrives one of two ways:
 * - `questboard dev` serves the page with sign-in by user name: the page
 *   asks `POST /dev/token` (a route only `dev` has);
 * - in production the embedding app opens the page as
 *   `/#token=<jwt>`: the fragment never leaves the browser (not sent to the
 *   server, not in the Referer), and the page removes it from the address
 *   bar at once.
 */

import { messageOf } from "./api.js";

/** Where a page keeps its token in `sessionStorage`: the table and the
 * console keep theirs apart (one tab may hold a player's and an
 * operator's). */
export const TABLE_KEY = "questboard.token";
export const CONSOLE_KEY = "questboard.console.token";

export interface SignedIn {
  token: string;
  user: string;
}

/** The claims of a JWT (not verified: the server does that). */
function claimsOf(token: string): Record<string, unknown> | undefined {
  const part = token.split(".")[1];
  if (part === undefined) return undefined;
  try {
    const bytes = Uint8Array.from(atob(part.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims === "object" && claims !== null ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The `sub` of a JWT that has not expired (not verified: the server does that). */
export function subjectOf(token: string): string | undefined {
  const claims = claimsOf(token);
  if (!claims) return undefined;
  if (typeof claims["exp"] === "number" && claims["exp"] * 1000 < Date.now()) return undefined;
  return typeof claims["sub"] === "string" ? claims["sub"] : undefined;
}

function signedIn(token: string): SignedIn | undefined {
  const user = subjectOf(token);
  return user === undefined ? undefined : { token, user };
}

/** Takes a token handed over in the fragment (`#token=`), else the tab's. */
export function restore(key = TABLE_KEY): SignedIn | undefined {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const handed = fragment.get("token");
  if (handed) {
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    const user = signedIn(handed);
    if (user) {
      sessionStorage.setItem(key, handed);
      return user;
    }
  }
  const kept = sessionStorage.getItem(key);
  return kept ? signedIn(kept) : undefined;
}

/** Whether this server offers sign-in by name (`questboard dev` only). */
export function devSignInOffered(): boolean {
  return document.querySelector('meta[name="questboard-dev-sign-in"]')?.getAttribute("content") === "on";
}

/** What a dev token may do besides playing. */
export type Access = "player" | "viewer" | "operator";

/** Signs in by user name through the dev server (with `access`: a
 * console's viewer or operator). */
export async function devSignIn(user: string, access?: Access, key = TABLE_KEY): Promise<SignedIn> {
  const resp = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(access ? { user, access } : { user }),
  });
  const body = (await resp.json().catch(() => ({}))) as { token?: string };
  if (!resp.ok || typeof body.token !== "string") {
    throw new Error(messageOf(body, `sign-in failed (${resp.status})`));
  }
  const who = signedIn(body.token);
  if (!who) throw new Error("the server answered an unreadable token");
  sessionStorage.setItem(key, body.token);
  return who;
}

export function signOut(key = TABLE_KEY): void {
  sessionStorage.removeItem(key);
}

/** The permissions a JWT claims (`permissions`, or a space-separated
 * `scope`); not verified (the server does that): the console uses it only
 * to leave out buttons a viewer could not use. */
export function permissionsOf(token: string): string[] {
  const claims = claimsOf(token) ?? {};
  const listed = Array.isArray(claims["permissions"])
    ? claims["permissions"].filter((p): p is string => typeof p === "string")
    : [];
  const scoped = typeof claims["scope"] === "string" ? claims["scope"].split(" ") : [];
  return [...listed, ...scoped];
}
