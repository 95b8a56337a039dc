/**
 * The console's frame: sign-in, the navigation between screens (kept in
 * the address's fragment, so a screen can be linked and reloaded), the
 * live feed of queue statistics every screen refreshes on, and what the
 * screens share ({@link Ctx}).
 */

import { useEffect, useMemo, useState } from "preact/hooks";
import { apiFor, messageOf, type Api } from "../shared/api.js";
import {
  CONSOLE_KEY,
  devSignIn,
  devSignInOffered,
  permissionsOf,
  restore,
  signOut,
  type Access,
  type SignedIn,
} from "../shared/signin.js";
import { follow, type FeedState } from "./feed.js";
import { Overview, type Queue } from "./overview.js";
import { Jobs } from "./jobs.js";
import { JobPage } from "./job.js";
import { Lanes, LanePage } from "./lanes.js";
import { Schedule } from "./schedule.js";
import { Start } from "./start.js";
import { Runs, RunPage } from "./runs.js";
import { Audit } from "./audit.js";

/** What every screen gets. */
export interface Ctx {
  api: Api;
  token: () => string;
  /** The operator permission: actions are offered (a viewer sees none). */
  canAct: boolean;
  /** Grows each time the queues change: screens reload their lists on it. */
  tick: number;
  /** Per kind, as the live feed last said. */
  queues: Queue[];
  /** The part of the fragment after the screen (`jobs/<id>` -> `<id>`). */
  rest: string;
  params: URLSearchParams;
}

const SCREENS = [
  ["overview", "Overview"],
  ["jobs", "Jobs"],
  ["lanes", "Session lanes"],
  ["schedule", "Schedule"],
  ["start", "Start a job"],
  ["runs", "Runs"],
  ["audit", "Audit"],
] as const;

function route(): { screen: string; rest: string; params: URLSearchParams } {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path = "", query = ""] = hash.split("?", 2);
  const [screen = "overview", ...rest] = path.split("/");
  return { screen: screen || "overview", rest: rest.join("/"), params: new URLSearchParams(query) };
}

export function App() {
  const [who, setWho] = useState<SignedIn | undefined>(() => restore(CONSOLE_KEY));
  if (!who) return <SignIn onSignedIn={setWho} />;
  return (
    <Signed
      who={who}
      onSignOut={() => {
        signOut(CONSOLE_KEY);
        setWho(undefined);
      }}
    />
  );
}

function SignIn({ onSignedIn }: { onSignedIn: (who: SignedIn) => void }) {
  const [name, setName] = useState("");
  const [access, setAccess] = useState<Access>("operator");
  const [error, setError] = useState<string>();
  if (!devSignInOffered()) {
    return (
      <main class="signin">
        <h1>questboard console</h1>
        <p>
          Open this page as <code>/console#token=…</code> with a token carrying the <code>questboard:operator</code> or{" "}
          <code>questboard:viewer</code> permission (<code>questboard token --operator</code> or <code>--viewer</code>{" "}
          mints one). The token stays in this tab only.
        </p>
      </main>
    );
  }
  return (
    <main class="signin">
      <h1>questboard console</h1>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setError(undefined);
          try {
            onSignedIn(await devSignIn(name.trim(), access, CONSOLE_KEY));
          } catch (err) {
            setError(err instanceof Error ? err.message : String(err));
          }
        }}
      >
        <label>
          User name
          <input name="user" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <label>
          Access
          <select name="access" value={access} onChange={(e) => setAccess(e.currentTarget.value as Access)}>
            <option value="operator">Operator (sees and acts)</option>
            <option value="viewer">Viewer (sees only)</option>
            <option value="player">Player (no console access)</option>
          </select>
        </label>
        <button type="submit">Sign in</button>
        {error && <p role="alert">{error}</p>}
      </form>
      <p class="hint">Development server: any user name signs in.</p>
    </main>
  );
}

function Signed({ who, onSignOut }: { who: SignedIn; onSignOut: () => void }) {
  const api = useMemo(() => apiFor(() => who.token), [who.token]);
  const token = () => who.token;
  const canAct = permissionsOf(who.token).includes("questboard:operator");
  const [where, setWhere] = useState(route);
  const [queues, setQueues] = useState<Queue[]>([]);
  const [tick, setTick] = useState(0);
  const [feed, setFeed] = useState<FeedState>("reconnecting");
  const [refused, setRefused] = useState<string>();

  useEffect(() => {
    const moved = () => setWhere(route());
    window.addEventListener("hashchange", moved);
    return () => window.removeEventListener("hashchange", moved);
  }, []);

  // The live feed: the queues now, and again whenever they change.
  useEffect(() => {
    void (async () => {
      const first = await api.GET("/api/admin/queues");
      if (first.error !== undefined) {
        setRefused(
          first.response.status === 403
            ? "This account may not use the console: it needs the questboard:operator or questboard:viewer permission."
            : messageOf(first.error),
        );
      }
    })();
    return follow("/api/admin/live", token, {
      onEvent: (name, data) => {
        if (name !== "queues") return;
        setQueues((data as { queues: Queue[] }).queues);
        setTick((t) => t + 1);
      },
      onState: setFeed,
    });
  }, [who.token]);

  if (refused) {
    return (
      <main class="signin">
        <h1>questboard console</h1>
        <p role="alert">{refused}</p>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </main>
    );
  }

  const ctx: Ctx = { api, token, canAct, tick, queues, rest: where.rest, params: where.params };
  return (
    <>
      <header class="bar">
        <h1>questboard console</h1>
        <nav aria-label="Screens">
          <ul>
            {SCREENS.map(([id, label]) => (
              <li key={id}>
                <a href={`#/${id}`} aria-current={where.screen === id ? "page" : undefined}>
                  {label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <span class="who">
          <span class={`feed ${feed}`} role="status" aria-label="Live updates">
            {feed === "live" ? "live" : feed === "paused" ? "paused (tab hidden)" : "reconnecting…"}
          </span>{" "}
          {who.user} ({canAct ? "operator" : "viewer"}){" "}
          <button type="button" onClick={onSignOut}>
            Sign out
          </button>
        </span>
      </header>
      <main class="screen">{screen(where.screen, ctx)}</main>
    </>
  );
}

function screen(name: string, ctx: Ctx) {
  switch (name) {
    case "jobs":
      return ctx.rest ? <JobPage ctx={ctx} id={ctx.rest} /> : <Jobs ctx={ctx} />;
    case "lanes":
      return ctx.rest ? <LanePage ctx={ctx} session={ctx.rest} /> : <Lanes ctx={ctx} />;
    case "schedule":
      return <Schedule ctx={ctx} />;
    case "start":
      return <Start ctx={ctx} />;
    case "runs":
      return ctx.rest ? <RunPage ctx={ctx} path={ctx.rest} /> : <Runs ctx={ctx} />;
    case "audit":
      return <Audit ctx={ctx} />;
    default:
      return <Overview ctx={ctx} />;
  }
}
