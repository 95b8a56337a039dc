/**
 * One job: its payload, result, progress, each failed attempt with its
 * worker, times and error, the lease holder; retry and cancel for
 * operators; and for a turn's job, the game master's reply as it streams
 * (`/api/admin/jobs/{id}/reply`).
 */

import { useEffect, useState } from "preact/hooks";
import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import { follow } from "./feed.js";
import { Confirmed, Json, Section, useLoaded, when } from "./ui.js";

interface Attempt {
  attempt?: number;
  at?: string;
  error?: string;
  worker?: string | null;
  started_at?: string | null;
}

export function JobPage({ ctx, id }: { ctx: Ctx; id: string }) {
  const [job, error, reload] = useLoaded(
    async () => must(await ctx.api.GET("/api/admin/jobs/{job_id}", { params: { path: { job_id: id } } })),
    [id, ctx.tick],
  );
  if (error) return <p role="alert">{error}</p>;
  if (!job) return <p class="hint">Loading…</p>;
  const attempts = (job.errors as Attempt[]) ?? [];
  const retryable = job.status === "failed" || job.status === "cancelled";
  const cancellable = job.status === "queued" || job.status === "running" || job.status === "retrying";
  return (
    <>
      <h2>
        Job <span class="mono">{job.job_id}</span>
      </h2>
      <dl class="facts">
        <dt>Kind</dt>
        <dd>{job.kind}</dd>
        <dt>Status</dt>
        <dd class={`status ${job.status}`} data-testid="job-status">
          {job.status}
        </dd>
        <dt>Attempts</dt>
        <dd>
          {job.attempts} of {job.max_attempts}
        </dd>
        <dt>Run at</dt>
        <dd>{when(job.run_at)}</dd>
        <dt>Started</dt>
        <dd>{when(job.started_at)}</dd>
        <dt>Finished</dt>
        <dd>{when(job.finished_at)}</dd>
        <dt>Session</dt>
        <dd>{job.session_id ? <a href={`#/lanes/${job.session_id}`}>{job.session_id}</a> : "–"}</dd>
        <dt>Unique key</dt>
        <dd>{job.unique_key ?? "–"}</dd>
        <dt>Lease holder</dt>
        <dd>
          {job.lease_holder ? `${job.lease_holder} (until ${when(job.lease_expires_at)})` : "–"}
        </dd>
        {job.cancel_requested_at && (
          <>
            <dt>Cancel asked</dt>
            <dd>{when(job.cancel_requested_at)}</dd>
          </>
        )}
        {job.progress && (
          <>
            <dt>Progress</dt>
            <dd>
              <progress
                aria-label="Progress"
                value={job.progress.done}
                max={job.progress.total ?? undefined}
              />{" "}
              {job.progress.done}
              {job.progress.total !== null && job.progress.total !== undefined ? ` of ${job.progress.total}` : ""}{" "}
              {job.progress.message ?? ""}
            </dd>
          </>
        )}
        <dt>Last error</dt>
        <dd class="error">{job.last_error ?? "–"}</dd>
      </dl>
      {ctx.canAct && (
        <div class="actions" role="group" aria-label="Job actions">
          {retryable && (
            <Confirmed
              label="Retry"
              question={`Queue job ${job.job_id} again, with its attempts reset?`}
              act={async () => {
                must(await ctx.api.POST("/api/admin/jobs/{job_id}/retry", { params: { path: { job_id: id } } }));
                reload();
                return "Queued again.";
              }}
            />
          )}
          {cancellable && (
            <Confirmed
              label="Cancel"
              danger
              question={`Cancel job ${job.job_id}? A running job stops at its next safe point.`}
              act={async () => {
                const done = must(
                  await ctx.api.POST("/api/admin/jobs/{job_id}/cancel", { params: { path: { job_id: id } } }),
                );
                reload();
                return done.outcome === "cancelled" ? "Cancelled." : "Asked to stop.";
              }}
            />
          )}
        </div>
      )}
      {job.kind === "turn" && <Reply ctx={ctx} id={id} />}
      <Section title="Attempts that failed">
        {attempts.length === 0 ? (
          <p class="hint">None.</p>
        ) : (
          <table>
            <thead>
              <tr>
                <th scope="col">Attempt</th>
                <th scope="col">Worker</th>
                <th scope="col">Started</th>
                <th scope="col">Failed</th>
                <th scope="col">Error</th>
              </tr>
            </thead>
            <tbody>
              {attempts.map((a, i) => (
                <tr key={i}>
                  <td>{a.attempt ?? "–"}</td>
                  <td>{a.worker ?? "–"}</td>
                  <td>{when(a.started_at)}</td>
                  <td>{when(a.at)}</td>
                  <td class="error">{a.error ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Section>
      <Section title="Payload">
        <Json value={job.payload} label="Payload" />
      </Section>
      <Section title="Result">
        <Json value={job.result} label="Result" />
      </Section>
      <Section title="Metadata">
        <Json value={job.metadata} label="Metadata" />
      </Section>
    </>
  );
}

interface TurnNow {
  status: string;
  output?: string | null;
  error?: string | null;
  seq: number;
}

/** The turn's reply: what is recorded, then each chunk as it streams. */
function Reply({ ctx, id }: { ctx: Ctx; id: string }) {
  const [turn, setTurn] = useState<TurnNow>();
  const [text, setText] = useState("");
  useEffect(() => {
    let attempt = 0;
    let streamed = "";
    let ended = false;
    return follow(`/api/admin/jobs/${encodeURIComponent(id)}/reply`, ctx.token, {
      onEvent: (name, data) => {
        if (name === "turn") {
          const now = data as TurnNow;
          ended = now.status === "completed" || now.status === "failed";
          setTurn(now);
          if (now.output) {
            streamed = now.output;
            setText(streamed);
          }
        } else if (name === "delta") {
          const d = data as { attempt: number; text: string };
          // A retried attempt streams its reply again: start over.
          if (d.attempt !== attempt) {
            attempt = d.attempt;
            streamed = "";
          }
          streamed += d.text;
          setText(streamed);
        }
      },
      finished: () => ended,
    });
  }, [id]);
  return (
    <Section title="Reply">
      <p class="hint">
        Turn {turn?.seq ?? "…"}: {turn?.status ?? "…"}
        {turn?.error ? ` (${turn.error})` : ""}
      </p>
      <p class="reply" aria-live="polite" aria-label="Reply text">
        {text}
      </p>
    </Section>
  );
}
