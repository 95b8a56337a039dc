/**
 * The table's frame: sign-in, then the session list beside the open
 * session. Holds who is signed in, the selected session (kept in
 * `localStorage` per user, so a reload resumes it) and an invite arriving
 * through a share link.
 */

import { useEffect, useMemo, useState } from "preact/hooks";
import { apiFor, must, type Api } from "../shared/api.js";
import { devSignIn, devSignInOffered, restore, signOut, type SignedIn } from "../shared/signin.js";
import { SessionList, type SessionSummary } from "./sessions.js";
import { SessionView } from "./session.js";

const INVITE_KEY = "questboard.invite";

/** Takes an invite token from a share link (`/join#<token>`) off the
 * address bar (call once, before the first render). */
export function takeInvite(): void {
  if (location.pathname === "/join") {
    let token = "";
    try {
      token = decodeURIComponent(location.hash.slice(1));
    } catch {
      token = location.hash.slice(1); // not %-encoded after all; the server judges it
    }
    if (token) sessionStorage.setItem(INVITE_KEY, token);
    history.replaceState(null, "", "/");
  }
}

function selectedKey(user: string): string {
  return `questboard.session.${user}`;
}

export function App() {
  const [who, setWho] = useState<SignedIn | undefined>(() => restore());
  if (!who) return <SignIn onSignedIn={setWho} />;
  return (
    <Signed
      who={who}
      onSignOut={() => {
        signOut();
        setWho(undefined);
      }}
    />
  );
}

function SignIn({ onSignedIn }: { onSignedIn: (who: SignedIn) => void }) {
  const [name, setName] = useState("");
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const pendingInvite = sessionStorage.getItem(INVITE_KEY) !== null;
  if (!devSignInOffered()) {
    return (
      <main class="signin">
        <h1>questboard</h1>
        <p>
          This page needs a sign-in from the app that embeds it: open it as <code>/#token=…</code> with a
          questboard token.
        </p>
      </main>
    );
  }
  return (
    <main class="signin">
      <h1>questboard</h1>
      {pendingInvite && <p>Sign in to join the session you were invited to.</p>}
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(undefined);
          try {
            onSignedIn(await devSignIn(name.trim()));
          } catch (err) {
            setError(err instanceof Error ? err.message : String(err));
          } finally {
            setBusy(false);
          }
        }}
      >
        <label>
          User name
          <input
            name="user"
            autocomplete="username"
            required
            value={name}
            onInput={(e) => setName(e.currentTarget.value)}
          />
        </label>
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        {error && <p role="alert">{error}</p>}
      </form>
      <p class="hint">Development server: any user name signs in.</p>
    </main>
  );
}

function Signed({ who, onSignOut }: { who: SignedIn; onSignOut: () => void }) {
  const api: Api = useMemo(() => apiFor(() => who.token), [who.token]);
  const [sessions, setSessions] = useState<SessionSummary[]>([]);
  const [selected, setSelected] = useState<string | undefined>(
    () => localStorage.getItem(selectedKey(who.user)) ?? undefined,
  );
  const [notice, setNotice] = useState<string>();

  const select = (id: string | undefined) => {
    if (id) localStorage.setItem(selectedKey(who.user), id);
    else localStorage.removeItem(selectedKey(who.user));
    setSelected(id);
  };

  // Every page of the list (100 a page), newest activity first.
  const refresh = async () => {
    try {
      const all: SessionSummary[] = [];
      let cursor: string | undefined;
      do {
        const page = must(
          await api.GET("/api/sessions", { params: { query: { limit: 100, ...(cursor ? { cursor } : {}) } } }),
        );
        all.push(...page.sessions);
        cursor = page.next_cursor ?? undefined;
      } while (cursor && all.length < 1000);
      setSessions(all);
      return all;
    } catch (err) {
      setNotice(err instanceof Error ? err.message : String(err));
      return undefined;
    }
  };

  useEffect(() => {
    void (async () => {
      const invite = sessionStorage.getItem(INVITE_KEY);
      if (invite) {
        sessionStorage.removeItem(INVITE_KEY);
        try {
          const joined = must(await api.POST("/api/invites/accept", { body: { token: invite } }));
          select(joined.session_id);
          setNotice(joined.already_member ? "You were already in this session." : "You joined the session.");
        } catch (err) {
          setNotice(`The invite did not work: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      const list = await refresh();
      // A remembered session that is no longer ours is forgotten.
      const kept = localStorage.getItem(selectedKey(who.user));
      if (list && kept && !list.some((s) => s.session_id === kept)) select(undefined);
    })();
  }, [api]);

  const current = sessions.find((s) => s.session_id === selected);
  return (
    <div class="table">
      <header class="bar">
        <h1>questboard</h1>
        <span class="who">
          Signed in as <strong>{who.user}</strong>
        </span>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      {notice && (
        <p role="status" class="notice">
          {notice}{" "}
          <button type="button" class="link" onClick={() => setNotice(undefined)}>
            Dismiss
          </button>
        </p>
      )}
      <div class="columns">
        <SessionList
          api={api}
          sessions={sessions}
          selected={selected}
          onSelect={select}
          onCreated={async (id) => {
            await refresh();
            select(id);
          }}
        />
        {current ? (
          <SessionView
            key={current.session_id}
            api={api}
            who={who}
            summary={current}
            onChanged={() => void refresh()}
            onGone={async (why) => {
              select(undefined);
              setNotice(why);
              await refresh();
            }}
            onEnded={async () => {
              // Archived sessions stay readable; otherwise we are out.
              const list = await refresh();
              const now = list?.find((s) => s.session_id === current.session_id);
              if (now?.status === "archived") {
                setNotice(`“${now.name}” was archived: it stays readable and takes no more turns.`);
              } else if (list) {
                select(undefined);
                setNotice(`You are no longer in “${current.name}”.`);
              }
            }}
          />
        ) : (
          <main class="empty">
            <p>{sessions.length ? "Choose a session, or start a new one." : "Start a new session to play."}</p>
          </main>
        )}
      </div>
    </div>
  );
}
