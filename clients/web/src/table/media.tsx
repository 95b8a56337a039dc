/**
 * Maps and notes: the session's uploaded files, listed by name and opened
 * through short-lived signed links; game masters upload new ones (the file
 * is the request body, its type declared, as the API takes it).
 */

import { useState } from "preact/hooks";
import { messageOf, type Api } from "../shared/api.js";
import type { LiveSession, MediaItem } from "./live.js";

export function MapsAndNotes({ live }: { live: LiveSession; api: Api }) {
  const files = [...live.media.values()].filter((m) => m.kind === "map" || m.kind === "note");
  const [open, setOpen] = useState<{ item: MediaItem; url: string }>();
  const [error, setError] = useState<string>();
  return (
    <div class="files">
      {live.isGameMaster && <Upload live={live} onError={setError} />}
      {error && <p role="alert">{error}</p>}
      {files.length === 0 && <p class="hint">No maps or notes yet.</p>}
      <ul>
        {files.map((m) => (
          <li key={m.mediaId}>
            <span class="kind">{m.kind}</span> <span class="name">{m.name ?? m.mediaId}</span>{" "}
            {m.status === "ready" ? (
              <button
                type="button"
                aria-label={`Open ${m.name ?? m.kind}`}
                onClick={async () => {
                  const url = await live.link(m);
                  if (url) setOpen({ item: m, url });
                  else setError("That file cannot be opened now.");
                }}
              >
                Open
              </button>
            ) : (
              <span class="status">{m.status}</span>
            )}
          </li>
        ))}
      </ul>
      {open && (
        <figure class="viewer" aria-label={`Viewing ${open.item.name ?? open.item.kind}`}>
          {open.item.kind === "map" ? (
            <img src={open.url} alt={open.item.name ?? "map"} />
          ) : (
            <a href={open.url} target="_blank" rel="noopener noreferrer">
              Download {open.item.name ?? "the note"}
            </a>
          )}
          <figcaption>
            {open.item.name}{" "}
            <button type="button" onClick={() => setOpen(undefined)}>
              Close
            </button>
          </figcaption>
        </figure>
      )}
    </div>
  );
}

function Upload({ live, onError }: { live: LiveSession; onError: (e: string | undefined) => void }) {
  const [kind, setKind] = useState<"map" | "note">("map");
  const [busy, setBusy] = useState(false);
  return (
    <form
      class="inline-form"
      onSubmit={async (e) => {
        e.preventDefault();
        const input = e.currentTarget.querySelector<HTMLInputElement>("input[type=file]");
        const file = input?.files?.[0];
        if (!file) return;
        setBusy(true);
        onError(undefined);
        try {
          const query = new URLSearchParams({ kind, name: file.name });
          const resp = await fetch(`/api/sessions/${encodeURIComponent(live.sessionId)}/assets?${query}`, {
            method: "POST",
            headers: { authorization: `Bearer ${live.token()}`, "content-type": file.type || "application/octet-stream" },
            body: file,
          });
          if (!resp.ok) {
            onError(messageOf(await resp.json().catch(() => undefined), `Upload failed (${resp.status}).`));
          } else if (input) {
            input.value = "";
          }
        } catch (err) {
          onError(err instanceof Error ? err.message : String(err));
        } finally {
          setBusy(false);
        }
      }}
    >
      <label>
        Kind
        <select value={kind} onChange={(e) => setKind(e.currentTarget.value === "note" ? "note" : "map")}>
          <option value="map">map</option>
          <option value="note">note</option>
        </select>
      </label>
      <label>
        File to upload
        <input type="file" required />
      </label>
      <button type="submit" disabled={busy}>
        Upload
      </button>
    </form>
  );
}
