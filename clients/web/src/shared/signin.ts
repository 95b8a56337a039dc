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

const KEY = "questboard.token";

export interface SignedIn {
  token: string;
  user: string;
}

/** The `sub` of a JWT (not verified: the server does that). */
export function subjectOf(token: string): string | undefined {
  const part = token.split(".")[1];
  if (part === undefined) return undefined;
  try {
    const bytes = Uint8Array.from(atob(part.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
    const json = new TextDecoder().decode(bytes);
    const claims = JSON.parse(json) as { sub?: unknown; exp?: unknown };
    if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) return undefined;
    return typeof claims.sub === "string" ? claims.sub : undefined;
  } catch {
    return undefined;
  }
}

function signedIn(token: string): SignedIn | undefined {
  const user = subjectOf(token);
  return user === undefined ? undefined : { token, user };
}

/** Takes a token handed over in the fragment (`#token=`), else the tab's. */
export function restore(): SignedIn | undefined {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const handed = fragment.get("token");
  if (handed) {
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    const user = signedIn(handed);
    if (user) {
      sessionStorage.setItem(KEY, handed);
      return user;
    }
  }
  const kept = sessionStorage.getItem(KEY);
  return kept ? signedIn(kept) : undefined;
}

/** Whether this server offers sign-in by name (`questboard dev` only). */
export function devSignInOffered(): boolean {
  return document.querySelector('meta[name="questboard-dev-sign-in"]')?.getAttribute("content") === "on";
}

/** Signs in by user name through the dev server. */
export async function devSignIn(user: string): Promise<SignedIn> {
  const resp = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = (await resp.json().catch(() => ({}))) as { token?: string };
  if (!resp.ok || typeof body.token !== "string") {
    throw new Error(messageOf(body, `sign-in failed (${resp.status})`));
  }
  const who = signedIn(body.token);
  if (!who) throw new Error("the server answered an unreadable token");
  sessionStorage.setItem(KEY, body.token);
  return who;
}

export function signOut(): void {
  sessionStorage.removeItem(KEY);
}
