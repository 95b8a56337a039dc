/**
 * Session lanes: the sessions with turns waiting, the longest-waiting head
 * turn first, who holds each session's lease and its fencing token, and
 * why the head turn waits; one lane with its queued turns and the
 * session's events.
 */

import { useState } from "preact/hooks";
import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import { Json, Section, span, useLoaded, when } from "./ui.js";

interface LaneFacts {
  waiting: string;
  lease_holder?: string | null;
  lease_expires_at?: string | null;
  retry_at?: string | null;
}

/** Why the head turn is where it is, in words. */
export function why(lane: LaneFacts): string {
  switch (lane.waiting) {
    case "running":
      return `running on ${lane.lease_holder ?? "?"}`;
    case "lease_held":
      return `lease held by ${lane.lease_holder ?? "?"} until ${when(lane.lease_expires_at)}`;
    case "retry_due":
      return `a run failed; retry due ${when(lane.retry_at)}`;
    case "kind_paused":
      return "the turn kind is paused";
    default:
      return "ready: waiting for a free worker";
  }
}

export function Lanes({ ctx }: { ctx: Ctx }) {
  const [page, error] = useLoaded(
    async () => must(await ctx.api.GET("/api/admin/lanes", { params: { query: { limit: 200 } } })),
    [ctx.tick],
  );
  return (
    <>
      <h2>Session lanes</h2>
      <p class="hint">
        A session runs its turns one at a time, in order. {page ? `${page.total} sessions have turns waiting.` : ""}
      </p>
      {error && <p role="alert">{error}</p>}
      <table class="lanes">
        <thead>
          <tr>
            <th scope="col">Session</th>
            <th scope="col">Waiting turns</th>
            <th scope="col">Head turn</th>
            <th scope="col">Head waited</th>
            <th scope="col">Why</th>
            <th scope="col">Lease holder</th>
            <th scope="col">Fencing token</th>
          </tr>
        </thead>
        <tbody>
          {page?.lanes.map((l) => (
            <tr key={l.session_id} data-session={l.session_id}>
              <th scope="row">
                <a href={`#/lanes/${l.session_id}`}>{l.session_name}</a>
              </th>
              <td>{l.unfinished}</td>
              <td>
                <a href={`#/jobs/${l.head_job_id}`}>#{l.head_seq}</a> ({l.head_status}, {l.head_attempts} runs)
              </td>
              <td>{span(l.head_wait_seconds)}</td>
              <td class="why">{why(l)}</td>
              <td>{l.lease_holder ?? "–"}</td>
              <td>{l.fencing_token ?? "–"}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && page.lanes.length === 0 && <p class="hint">No session has turns waiting.</p>}
    </>
  );
}

export function LanePage({ ctx, session }: { ctx: Ctx; session: string }) {
  const [detail, error] = useLoaded(async () => {
    const got = await ctx.api.GET("/api/admin/lanes/{session_id}", { params: { path: { session_id: session } } });
    return got.response.status === 404 ? null : must(got);
  }, [session, ctx.tick]);
  return (
    <>
      <h2>
        Session <span class="mono">{session}</span>
      </h2>
      {error && <p role="alert">{error}</p>}
      {detail === null && <p class="hint">No turn of this session is waiting.</p>}
      {detail && (
        <>
          <p>
            <strong>{detail.lane.session_name}</strong>: {why(detail.lane)}; lease holder{" "}
            {detail.lane.lease_holder ?? "none"}, fencing token {detail.lane.fencing_token ?? "–"}.
          </p>
          <table>
            <thead>
              <tr>
                <th scope="col">Turn</th>
                <th scope="col">Status</th>
                <th scope="col">Author</th>
                <th scope="col">Runs</th>
                <th scope="col">Submitted</th>
                <th scope="col">Not before</th>
                <th scope="col">Last error</th>
              </tr>
            </thead>
            <tbody>
              {detail.turns.map((t) => (
                <tr key={t.turn_id}>
                  <td>
                    <a href={`#/jobs/${t.job_id}`}>#{t.seq}</a>
                  </td>
                  <td>{t.status}</td>
                  <td>{t.author_user_id}</td>
                  <td>{t.attempts}</td>
                  <td>{when(t.created_at)}</td>
                  <td>{when(t.run_at)}</td>
                  <td class="error">{t.error ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      <Events ctx={ctx} session={session} />
    </>
  );
}

/** The session's event log, a page at a time. */
function Events({ ctx, session }: { ctx: Ctx; session: string }) {
  const [after, setAfter] = useState(0);
  const [page, error] = useLoaded(
    async () =>
      must(
        await ctx.api.GET("/api/admin/sessions/{session_id}/events", {
          params: { path: { session_id: session }, query: { after_seq: after, limit: 50 } },
        }),
      ),
    [session, after],
  );
  const last = page?.events[page.events.length - 1]?.seq;
  return (
    <Section title="Events">
      {error && <p role="alert">{error}</p>}
      <ol class="events">
        {page?.events.map((e) => (
          <li key={e.seq}>
            <span class="mono">
              {e.seq} {e.type}
            </span>{" "}
            <span class="hint">{when(e.at)}</span>
            <Json value={e.data} label={`Event ${e.seq}`} />
          </li>
        ))}
      </ol>
      <button type="button" disabled={after === 0} onClick={() => setAfter(0)}>
        First events
      </button>{" "}
      <button type="button" disabled={!last || (page?.events.length ?? 0) < 50} onClick={() => last && setAfter(last)}>
        Later events
      </button>
    </Section>
  );
}
