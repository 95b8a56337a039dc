/**
 * The schedule: every entry with its cron, time zone, next fire, last tick
 * and that tick's job, the current leader; "run now" for operators (one
 * run per entry and minute, unique-keyed like a tick).
 */

import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import { Confirmed, useLoaded, when } from "./ui.js";

export function Schedule({ ctx }: { ctx: Ctx }) {
  const [view, error] = useLoaded(async () => must(await ctx.api.GET("/api/admin/schedule")), [ctx.tick]);
  return (
    <>
      <h2>Schedule</h2>
      {error && <p role="alert">{error}</p>}
      {view && (
        <p>
          Leader: {view.leader ?? "none (no scheduler is running)"}
          {view.leader_lease_expires_at ? `, lease until ${when(view.leader_lease_expires_at)}` : ""}
        </p>
      )}
      <table>
        <thead>
          <tr>
            <th scope="col">Entry</th>
            <th scope="col">Cron</th>
            <th scope="col">Time zone</th>
            <th scope="col">Kind</th>
            <th scope="col">Next fire</th>
            <th scope="col">Last tick</th>
            <th scope="col">Its job</th>
            <th scope="col">Run now</th>
          </tr>
        </thead>
        <tbody>
          {view?.entries.map((e) => (
            <tr key={e.name} data-entry={e.name}>
              <th scope="row">
                {e.name}
                {e.enabled ? "" : " (disabled)"}
              </th>
              <td class="mono">{e.cron}</td>
              <td>{e.timezone}</td>
              <td>{e.kind}</td>
              <td>{when(e.next_fire)}</td>
              <td>{when(e.last_tick)}</td>
              <td>
                {e.last_job_id ? (
                  <a href={`#/jobs/${e.last_job_id}`}>{e.last_job_status ?? "pruned"}</a>
                ) : (
                  "–"
                )}
              </td>
              <td>
                {ctx.canAct && (
                  <Confirmed
                    label={`Run ${e.name} now`}
                    question={`Run ${e.name} now (${e.kind}), once?`}
                    act={async () => {
                      const got = await ctx.api.POST("/api/admin/schedule/{name}/run", {
                        params: { path: { name: e.name } },
                      });
                      const started = must(got);
                      return started.created
                        ? `Started job ${started.job_id}.`
                        : `Already run this minute: job ${started.job_id}.`;
                    }}
                  />
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
