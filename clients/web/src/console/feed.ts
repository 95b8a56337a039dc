/**
 * Server-sent events read with `fetch` (so the token travels in the
 * `Authorization` header, as on every other call, and never in a URL),
 * reopened when the server ends a feed or the connection drops, and closed
 * while the tab is hidden: a console left in a background tab costs the
 * server nothing.
 */

export type FeedState = "live" | "paused" | "reconnecting";

export interface FeedOptions {
  /** Called with each event's name and parsed data. */
  onEvent: (name: string, data: unknown) => void;
  /** Called when the feed goes live, pauses (tab hidden) or reconnects. */
  onState?: (state: FeedState) => void;
  /** Asked when the server ends the feed: true stops following (nothing
   * more will come), false (or absent) opens it again. */
  finished?: () => boolean;
}

/** Follows the feed at `path`; returns a function that stops it. */
export function follow(path: string, token: () => string, options: FeedOptions): () => void {
  let stopped = false;
  let controller: AbortController | undefined;
  let retry = 500;

  const run = async () => {
    while (!stopped && !document.hidden) {
      controller = new AbortController();
      try {
        const resp = await fetch(path, {
          headers: { authorization: `Bearer ${token()}`, accept: "text/event-stream" },
          signal: controller.signal,
        });
        if (!resp.ok || !resp.body) throw new Error(`feed answered ${resp.status}`);
        options.onState?.("live");
        retry = 500;
        await read(resp.body, options.onEvent);
        if (options.finished?.()) {
          stopped = true;
          document.removeEventListener("visibilitychange", visibility);
        }
      } catch {
        if (stopped || document.hidden) break;
        options.onState?.("reconnecting");
        await new Promise((r) => setTimeout(r, retry));
        retry = Math.min(retry * 2, 10_000);
      }
    }
  };

  const visibility = () => {
    if (document.hidden) {
      controller?.abort();
      options.onState?.("paused");
    } else if (!stopped) {
      void run();
    }
  };
  document.addEventListener("visibilitychange", visibility);
  if (document.hidden) options.onState?.("paused");
  else void run();
  return () => {
    stopped = true;
    document.removeEventListener("visibilitychange", visibility);
    controller?.abort();
  };
}

async function read(body: ReadableStream<Uint8Array>, onEvent: (name: string, data: unknown) => void) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length === 0) continue; // a keep-alive comment
      try {
        onEvent(name, JSON.parse(data.join("\n")));
      } catch {
        // not JSON: not ours
      }
    }
  }
}
