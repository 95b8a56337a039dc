/**
 * Playing: the transcript (each turn with its author, its status and the
 * reply as it streams in, with the images and narration it brought) and
 * the turn box. A submission carries an idempotency key kept until the
 * server has taken it, so a double click or a retry after a lost answer
 * never makes two turns.
 */

import { useEffect, useRef, useState } from "preact/hooks";
import type { TranscriptTurn } from "@questboard/client";
import { must, Refused, type Api } from "../shared/api.js";
import type { LiveSession, MediaItem } from "./live.js";

const STATUS_TEXT: Record<TranscriptTurn["status"], string> = {
  queued: "queued",
  running: "the game master is writing…",
  retrying: "retrying",
  completed: "",
  failed: "failed",
};

export function Play({ live, api, archived }: { live: LiveSession; api: Api; archived: boolean }) {
  const turns = live.transcript.turns;
  const byTurn = new Map<string, MediaItem[]>();
  const loose: MediaItem[] = [];
  for (const item of live.media.values()) {
    if (item.kind !== "image" && item.kind !== "audio") continue;
    if (item.turnId) byTurn.set(item.turnId, [...(byTurn.get(item.turnId) ?? []), item]);
    else loose.push(item);
  }
  return (
    <div class="play">
      <ol class="transcript" aria-label="Transcript">
        {turns.map((t) => (
          <Turn key={t.turnId} turn={t} media={byTurn.get(t.turnId) ?? []} />
        ))}
      </ol>
      {turns.length === 0 && <p class="hint">No turns yet.</p>}
      {loose.length > 0 && (
        <section aria-label="Other media">
          {loose.map((m) => (
            <Media key={m.mediaId} item={m} />
          ))}
        </section>
      )}
      <TurnBox live={live} api={api} disabled={archived} />
    </div>
  );
}

function Turn({ turn, media }: { turn: TranscriptTurn; media: MediaItem[] }) {
  return (
    <li class={`turn ${turn.status}`} data-seq={turn.seq}>
      <p class="input">
        <span class="author">{turn.author}</span> <span class="text">{turn.input}</span>
      </p>
      {turn.reply && (
        <p class="reply" aria-label={`Reply to turn ${turn.seq}`}>
          {turn.reply}
        </p>
      )}
      {turn.status !== "completed" && (
        <p class="status">
          {STATUS_TEXT[turn.status]}
          {turn.error ? `: ${turn.error}` : ""}
        </p>
      )}
      {media.map((m) => (
        <Media key={m.mediaId} item={m} />
      ))}
      {turn.mediaNote && <p class="status">{turn.mediaNote}</p>}
    </li>
  );
}

function Media({ item }: { item: MediaItem }) {
  const label = item.prompt ?? item.name ?? item.kind;
  if (item.status === "failed") return <p class="status">Could not make {item.kind}: {item.failure}</p>;
  if (item.status !== "ready" || !item.url) return <p class="status">Making {item.kind === "audio" ? "narration" : "an image"}…</p>;
  if (item.kind === "audio") return <audio controls src={item.url} aria-label={`Narration: ${label}`} />;
  return (
    <figure>
      <img src={item.url} alt={label} loading="lazy" />
      <figcaption>{label}</figcaption>
    </figure>
  );
}

function TurnBox({ live, api, disabled }: { live: LiveSession; api: Api; disabled: boolean }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  // The key of the submission being made: the same text sent again (a
  // retry after an error) reuses it; new text gets a new one.
  const key = useRef<{ text: string; key: string }>();
  useEffect(() => setError(undefined), [text]);
  const send = async () => {
    if (busy || !text.trim()) return;
    const k = key.current?.text === text ? key.current.key : crypto.randomUUID();
    key.current = { text, key: k };
    setBusy(true);
    setError(undefined);
    try {
      must(
        await api.POST("/api/sessions/{session_id}/turns", {
          params: { path: { session_id: live.sessionId }, header: { "Idempotency-Key": k } },
          body: { text },
        }),
      );
      key.current = undefined;
      setText("");
    } catch (err) {
      setError(err instanceof Refused ? err.message : `Not sent (${err instanceof Error ? err.message : String(err)}). Send again to retry.`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form
      class="turnbox"
      onSubmit={(e) => {
        e.preventDefault();
        void send();
      }}
    >
      <label>
        Your turn
        <textarea
          rows={3}
          value={text}
          disabled={disabled}
          onInput={(e) => setText(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
              e.preventDefault();
              void send();
            }
          }}
        />
      </label>
      <button type="submit" disabled={disabled || busy}>
        Send
      </button>
      {disabled && <p class="hint">This session is archived: it takes no more turns.</p>}
      {error && <p role="alert">{error}</p>}
    </form>
  );
}
