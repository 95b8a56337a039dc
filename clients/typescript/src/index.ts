/**
 * questboard's client library: the session socket with resume, the
 * transcript its events and reply chunks make, the game-state store, and
 * typed REST calls generated from the server's OpenAPI description.
 */

export * from "./backoff.js";
export * from "./events.js";
export * from "./ops.js";
export * from "./socket.js";
export * from "./store.js";
export * from "./transcript.js";
export * from "./rest.js";
