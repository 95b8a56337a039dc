/**
 * The overview: every kind's queue (counts, oldest wait, paused,
 * concurrency, pause and resume), jobs succeeded and failed over the last
 * hour and day as small charts, and the workers alive with what each runs.
 * All from the database (`/api/admin/queues`, `/api/admin/activity`): the
 * console works without Prometheus.
 */

import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import { Confirmed, Section, span, useLoaded, when } from "./ui.js";

export interface Queue {
  kind: string;
  queued: number;
  running: number;
  retrying: number;
  failed: number;
  cancelled: number;
  oldest_wait_seconds?: number | null;
  paused: boolean;
  concurrency: number;
  operator_may_start: boolean;
  payload_schema?: Record<string, unknown> | null;
}

interface Series {
  kind: string;
  succeeded: number[];
  failed: number[];
}

export function Overview({ ctx }: { ctx: Ctx }) {
  const [activity, error] = useLoaded(() => ctx.api.GET("/api/admin/activity").then(must), [ctx.tick]);
  const series = (list: Series[] | undefined, kind: string) => list?.find((s) => s.kind === kind);
  return (
    <>
      <Section title="Queues">
        <table>
          <thead>
            <tr>
              <th scope="col">Kind</th>
              <th scope="col">Queued</th>
              <th scope="col">Running</th>
              <th scope="col">Retrying</th>
              <th scope="col">Failed</th>
              <th scope="col">Cancelled</th>
              <th scope="col">Oldest wait</th>
              <th scope="col">Concurrency</th>
              <th scope="col">Last hour</th>
              <th scope="col">Last day</th>
              <th scope="col">State</th>
            </tr>
          </thead>
          <tbody>
            {ctx.queues.map((q) => (
              <tr key={q.kind} data-kind={q.kind}>
                <th scope="row">
                  <a href={`#/jobs?kind=${encodeURIComponent(q.kind)}`}>{q.kind}</a>
                </th>
                <td>{q.queued}</td>
                <td>{q.running}</td>
                <td>{q.retrying}</td>
                <td>
                  {q.failed > 0 ? (
                    <a href={`#/jobs?kind=${encodeURIComponent(q.kind)}&status=failed`}>{q.failed}</a>
                  ) : (
                    q.failed
                  )}
                </td>
                <td>{q.cancelled}</td>
                <td>{span(q.oldest_wait_seconds)}</td>
                <td>{q.concurrency}</td>
                <td>
                  <Chart kind={q.kind} span="hour" series={series(activity?.throughput.hour, q.kind)} />
                </td>
                <td>
                  <Chart kind={q.kind} span="day" series={series(activity?.throughput.day, q.kind)} />
                </td>
                <td>
                  {q.paused ? <strong>paused</strong> : "running"}{" "}
                  {ctx.canAct && (
                    <Confirmed
                      label={q.paused ? `Resume ${q.kind}` : `Pause ${q.kind}`}
                      question={
                        q.paused
                          ? `Resume ${q.kind}? Workers claim its jobs again.`
                          : `Pause ${q.kind}? No worker claims its jobs until it is resumed; runs going on finish.`
                      }
                      act={async () => {
                        const path = q.paused
                          ? "/api/admin/queues/{kind}/resume"
                          : "/api/admin/queues/{kind}/pause";
                        const done = must(await ctx.api.POST(path, { params: { path: { kind: q.kind as never } } }));
                        return done.paused ? `${q.kind} paused` : `${q.kind} resumed`;
                      }}
                    />
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
      <Section title="Workers">
        {error && <p role="alert">{error}</p>}
        {activity && activity.workers.length === 0 && <p class="hint">No worker has reported in the last day.</p>}
        <ul class="workers">
          {activity?.workers.map((w) => (
            <li key={w.id} class={w.alive ? "alive" : "dead"}>
              <strong>{w.id}</strong> {w.alive ? "alive" : "not seen since " + when(w.seen_at)} · {w.host} pid {w.pid} ·
              serves {w.kinds.join(", ")} · started {when(w.started_at)}
              {w.running.length === 0 ? (
                <span class="hint"> · idle</span>
              ) : (
                <ul>
                  {w.running.map((h) => (
                    <li key={h.scope + h.key}>
                      {h.scope === "session" ? (
                        <a href={`#/lanes/${h.key}`}>session {h.key}</a>
                      ) : (
                        <a href={`#/jobs/${h.key}`}>job {h.key}</a>
                      )}{" "}
                      (token {h.token}, since {when(h.since)})
                    </li>
                  ))}
                </ul>
              )}
            </li>
          ))}
        </ul>
      </Section>
    </>
  );
}

/** Succeeded (and failed, on top) per bucket, as bars. */
function Chart({ kind, span: over, series }: { kind: string; span: "hour" | "day"; series: Series | undefined }) {
  if (!series) return <span class="hint">–</span>;
  const ok = series.succeeded.reduce((a, b) => a + b, 0);
  const bad = series.failed.reduce((a, b) => a + b, 0);
  const top = Math.max(1, ...series.succeeded.map((s, i) => s + (series.failed[i] ?? 0)));
  const width = 4;
  const height = 24;
  return (
    <span class="chart">
      <svg
        role="img"
        aria-label={`${kind}, last ${over}: ${ok} succeeded, ${bad} failed`}
        width={series.succeeded.length * width}
        height={height}
        viewBox={`0 0 ${series.succeeded.length * width} ${height}`}
      >
        {series.succeeded.map((s, i) => {
          const f = series.failed[i] ?? 0;
          const hs = (s / top) * height;
          const hf = (f / top) * height;
          return (
            <g key={i}>
              <rect class="ok" x={i * width} y={height - hs} width={width - 1} height={hs} />
              <rect class="bad" x={i * width} y={height - hs - hf} width={width - 1} height={hf} />
            </g>
          );
        })}
      </svg>
      <span class="sums">
        {ok}✓ {bad > 0 ? <span class="bad">{bad}✗</span> : null}
      </span>
    </span>
  );
}
