/**
 * The session list (newest activity first, by name) and the form that
 * starts a new session.
 */

import { useState } from "preact/hooks";
import type { components } from "@questboard/client";
import { must, type Api } from "../shared/api.js";

export type SessionSummary = components["schemas"]["SessionView"];

export function SessionList(props: {
  api: Api;
  sessions: SessionSummary[];
  selected: string | undefined;
  onSelect: (id: string) => void;
  onCreated: (id: string) => Promise<void>;
}) {
  const [name, setName] = useState("");
  const [error, setError] = useState<string>();
  return (
    <nav class="sessions" aria-label="Sessions">
      <h2>Sessions</h2>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setError(undefined);
          try {
            const created = must(await props.api.POST("/api/sessions", { body: { name } }));
            setName("");
            await props.onCreated(created.session_id);
          } catch (err) {
            setError(err instanceof Error ? err.message : String(err));
          }
        }}
      >
        <label>
          Session name
          <input name="session-name" required maxLength={100} value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <button type="submit">New session</button>
        {error && <p role="alert">{error}</p>}
      </form>
      <ul>
        {props.sessions.map((s) => (
          <li key={s.session_id}>
            <button
              type="button"
              class="session"
              aria-current={s.session_id === props.selected ? "true" : undefined}
              onClick={() => props.onSelect(s.session_id)}
            >
              <span class="name">{s.name}</span>
              <span class="meta">
                {s.role}
                {s.status === "archived" ? " · archived" : ""}
              </span>
            </button>
          </li>
        ))}
      </ul>
    </nav>
  );
}
