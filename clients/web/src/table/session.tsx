/**
 * One open session: its header (name, owner's rename and archive, leave,
 * share) and its four panels: play, game state, maps and notes, members.
 * Owns the session's {@link LiveSession} for as long as it is shown.
 */

import { useEffect, useMemo, useReducer, useState } from "preact/hooks";
import { must, type Api } from "../shared/api.js";
import type { SignedIn } from "../shared/signin.js";
import { LiveSession } from "./live.js";
import { Play } from "./play.js";
import { GameState } from "./state.js";
import { MapsAndNotes } from "./media.js";
import { Members } from "./members.js";
import type { SessionSummary } from "./sessions.js";

const PANELS = ["Play", "Game state", "Maps and notes", "Members"] as const;
type Panel = (typeof PANELS)[number];

export function SessionView(props: {
  api: Api;
  who: SignedIn;
  summary: SessionSummary;
  onChanged: () => void;
  onGone: (why: string) => void;
  /** The server closed the session's socket for good (removed, left or archived). */
  onEnded: () => void;
}) {
  const { api, who, summary } = props;
  const live = useMemo(
    () => new LiveSession(summary.session_id, who.user, api, () => who.token),
    [summary.session_id, who.token],
  );
  const [, bump] = useReducer((n: number) => n + 1, 0);
  const redraw = () => bump(undefined);
  const [panel, setPanel] = useState<Panel>("Play");
  useEffect(() => {
    const off = live.subscribe(redraw);
    return () => {
      off();
      live.close();
    };
  }, [live]);
  useEffect(() => {
    if (live.ended?.kind === "access_ended") props.onEnded();
  }, [live.ended]);
  const detail = live.detail;
  const name = detail?.name ?? summary.name;
  useEffect(() => {
    if (detail && detail.name !== summary.name) props.onChanged();
  }, [detail?.name]);
  const archived = (detail?.status ?? summary.status) === "archived";
  return (
    <main class="session" aria-label={`Session ${name}`}>
      <header class="session-head">
        <h2>{name}</h2>
        <span class="badge" role="status" aria-label="Connection">
          {live.connected ? "live" : "reconnecting…"}
        </span>
        {archived && <span class="badge">archived</span>}
        <SessionActions live={live} api={api} who={who} name={name} archived={archived} onChanged={props.onChanged} onGone={props.onGone} />
      </header>
      {live.notice && <p role="alert">{live.notice}</p>}
      <div role="tablist" aria-label="Session panels" class="tabs">
        {PANELS.map((p) => (
          <button
            type="button"
            role="tab"
            key={p}
            id={`tab-${p}`}
            aria-selected={panel === p}
            aria-controls="session-panel"
            onClick={() => setPanel(p)}
          >
            {p}
          </button>
        ))}
      </div>
      <section role="tabpanel" id="session-panel" aria-labelledby={`tab-${panel}`}>
        {panel === "Play" && <Play live={live} api={api} archived={archived} />}
        {panel === "Game state" && <GameState live={live} api={api} />}
        {panel === "Maps and notes" && <MapsAndNotes live={live} api={api} />}
        {panel === "Members" && <Members live={live} api={api} who={who} />}
      </section>
    </main>
  );
}

function SessionActions(props: {
  live: LiveSession;
  api: Api;
  who: SignedIn;
  name: string;
  archived: boolean;
  onChanged: () => void;
  onGone: (why: string) => void;
}) {
  const { live, api } = props;
  const id = live.sessionId;
  const [renaming, setRenaming] = useState(false);
  const [newName, setNewName] = useState(props.name);
  const [error, setError] = useState<string>();
  const [share, setShare] = useState<{ link: string; copied: boolean }>();
  const [role, setRole] = useState<"player" | "gm">("player");
  const owner = live.role === "owner";
  const act = async (f: () => Promise<void>) => {
    setError(undefined);
    try {
      await f();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };
  return (
    <div class="actions">
      {owner && !props.archived && (
        <>
          <label class="inline">
            Invite as
            <select value={role} onChange={(e) => setRole(e.currentTarget.value === "gm" ? "gm" : "player")}>
              <option value="player">player</option>
              <option value="gm">game master</option>
            </select>
          </label>
          <button
            type="button"
            onClick={() =>
              act(async () => {
                const invite = must(await api.POST("/api/sessions/{session_id}/invites", { params: { path: { session_id: id } }, body: { role } }));
                // The token travels in the fragment: never sent to a server, never in a Referer.
                const link = `${location.origin}/join#${encodeURIComponent(invite.token)}`;
                let copied = false;
                try {
                  await navigator.clipboard.writeText(link);
                  copied = true;
                } catch {
                  copied = false;
                }
                setShare({ link, copied });
              })
            }
          >
            Share
          </button>
        </>
      )}
      {owner && !props.archived && (
        <button type="button" onClick={() => setRenaming(!renaming)} aria-expanded={renaming}>
          Rename
        </button>
      )}
      {owner && !props.archived && (
        <button
          type="button"
          onClick={() =>
            act(async () => {
              if (!confirm(`Archive “${props.name}”? It stays readable but takes no more turns.`)) return;
              must(await api.DELETE("/api/sessions/{session_id}", { params: { path: { session_id: id } } }));
              props.onChanged();
            })
          }
        >
          Archive session
        </button>
      )}
      {!owner && live.role && (
        <button
          type="button"
          onClick={() =>
            act(async () => {
              if (!confirm(`Leave “${props.name}”? You will need a new invite to come back.`)) return;
              must(
                await api.DELETE("/api/sessions/{session_id}/members/{user_id}", {
                  params: { path: { session_id: id, user_id: props.who.user } },
                }),
              );
              props.onGone(`You left “${props.name}”.`);
            })
          }
        >
          Leave session
        </button>
      )}
      {renaming && (
        <form
          class="rename"
          onSubmit={(e) => {
            e.preventDefault();
            void act(async () => {
              must(await api.PATCH("/api/sessions/{session_id}", { params: { path: { session_id: id } }, body: { name: newName } }));
              setRenaming(false);
              props.onChanged();
            });
          }}
        >
          <label>
            New name
            <input required maxLength={100} value={newName} onInput={(e) => setNewName(e.currentTarget.value)} />
          </label>
          <button type="submit">Save name</button>
        </form>
      )}
      {share && (
        <div class="share">
          <label>
            Share link
            <input readOnly value={share.link} onFocus={(e) => e.currentTarget.select()} />
          </label>
          <p role="status">{share.copied ? "Copied to the clipboard. It works once." : "Copy the link above. It works once."}</p>
        </div>
      )}
      {error && <p role="alert">{error}</p>}
    </div>
  );
}
