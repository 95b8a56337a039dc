/**
 * How the pages reach questboard: the typed REST client of
 * `@questboard/client` on this origin with the signed-in user's token, and
 * the one way they turn a refusal into words a person can read.
 */

import { restClient } from "@questboard/client";

export type Api = ReturnType<typeof restClient>;

/** The REST client for `token`, on the origin that served the page. */
export function apiFor(token: () => string): Api {
  return restClient({ baseUrl: location.origin, token });
}

/** The message of an error answer (`{error: {message}}`), or a fallback. */
export function messageOf(error: unknown, fallback = "Something went wrong."): string {
  if (typeof error === "object" && error !== null) {
    const inner = (error as { error?: { message?: unknown } }).error;
    if (inner && typeof inner.message === "string") return inner.message;
    if (error instanceof Error) return error.message;
  }
  return fallback;
}

/** Thrown by {@link must} with the server's message. */
export class Refused extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = "Refused";
  }
}

/** The data of an openapi-fetch answer, or a {@link Refused} error. */
export function must<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || result.data === undefined) {
    if (result.response.ok && result.error === undefined) return undefined as T;
    throw new Refused(messageOf(result.error), result.response.status);
  }
  return result.data;
}
