/**
 * Typed REST calls: `openapi-fetch` over the types generated from the
 * server's OpenAPI description (`api.ts`), with the bearer token added to
 * every request. Paths, parameters, bodies and answers are checked by the
 * compiler against what the server describes.
 *
 * ```ts
 * const api = restClient({ baseUrl, token: () => myToken });
 * const { data, error } = await api.POST("/api/sessions", { body: { name: "The Lost Mine" } });
 * ```
 */

import createClient, { type Client } from "openapi-fetch";

import type { paths } from "./api.js";

export type { paths, components, operations } from "./api.js";

export interface RestOptions {
  /** The questboard origin, e.g. `https://play.example.com`. */
  baseUrl: string;
  /** The current token for each request. */
  token: () => string | Promise<string>;
  /** The fetch used (the global one by default). */
  fetch?: typeof fetch;
}

/** A typed client of questboard's REST API. */
export function restClient(options: RestOptions): Client<paths> {
  const client = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/$/, ""),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  client.use({
    async onRequest({ request }) {
      request.headers.set("authorization", `Bearer ${await options.token()}`);
      return request;
    },
  });
  return client;
}
