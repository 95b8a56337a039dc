/**
 * Who is in the session, with their roles; the owner removes members.
 */

import { useState } from "preact/hooks";
import { must, type Api } from "../shared/api.js";
import type { SignedIn } from "../shared/signin.js";
import type { LiveSession } from "./live.js";

export function Members({ live, api, who }: { live: LiveSession; api: Api; who: SignedIn }) {
  const [error, setError] = useState<string>();
  const members = live.detail?.members ?? [];
  const owner = live.role === "owner";
  return (
    <div class="members">
      {error && <p role="alert">{error}</p>}
      <ul aria-label="Members">
        {members.map((m) => (
          <li key={m.user_id}>
            <span class="name">{m.user_id}</span> <span class="role">{m.role === "gm" ? "game master" : m.role}</span>
            {m.user_id === who.user && <span class="hint"> (you)</span>}
            {owner && m.role !== "owner" && (
              <button
                type="button"
                aria-label={`Remove ${m.user_id}`}
                onClick={async () => {
                  setError(undefined);
                  try {
                    must(
                      await api.DELETE("/api/sessions/{session_id}/members/{user_id}", {
                        params: { path: { session_id: live.sessionId, user_id: m.user_id } },
                      }),
                    );
                  } catch (err) {
                    setError(err instanceof Error ? err.message : String(err));
                  }
                }}
              >
                Remove
              </button>
            )}
          </li>
        ))}
      </ul>
    </div>
  );
}
