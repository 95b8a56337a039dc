/**
 * Runs: asset migrations and legacy imports with their progress; one run's
 * counts and report; resume (a run whose job failed for good) and roll
 * back (an ended migration) for operators, after a confirmation.
 */

import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import { Confirmed, Json, Section, useLoaded, when } from "./ui.js";

export function Runs({ ctx }: { ctx: Ctx }) {
  const [page, error] = useLoaded(async () => must(await ctx.api.GET("/api/admin/runs")), [ctx.tick]);
  return (
    <>
      <h2>Runs</h2>
      {error && <p role="alert">{error}</p>}
      <table>
        <thead>
          <tr>
            <th scope="col">Run</th>
            <th scope="col">Kind</th>
            <th scope="col">Status</th>
            <th scope="col">Progress</th>
            <th scope="col">Started by</th>
            <th scope="col">Created</th>
            <th scope="col">Finished</th>
          </tr>
        </thead>
        <tbody>
          {page?.runs.map((r) => (
            <tr key={r.run_id}>
              <td>
                <a href={`#/runs/${r.kind}/${r.run_id}`}>{r.run_id}</a>
              </td>
              <td>
                {r.kind}
                {r.dry_run ? " (dry run)" : ""}
              </td>
              <td>{r.status}</td>
              <td>
                {r.progress_done !== null && r.progress_done !== undefined
                  ? `${r.progress_done}${r.progress_total ? ` of ${r.progress_total}` : ""} ${r.progress_message ?? ""}`
                  : "–"}
              </td>
              <td>{r.created_by}</td>
              <td>{when(r.created_at)}</td>
              <td>{when(r.finished_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && page.runs.length === 0 && <p class="hint">No migration or import has run.</p>}
    </>
  );
}

export function RunPage({ ctx, path }: { ctx: Ctx; path: string }) {
  const [kind = "", id = ""] = path.split("/");
  const [run, error, reload] = useLoaded(async () => {
    if (kind === "asset_migration") {
      return must(
        await ctx.api.GET("/api/admin/migrations/assets/{run_id}", { params: { path: { run_id: id } } }),
      ) as Record<string, unknown>;
    }
    return must(
      await ctx.api.GET("/api/admin/imports/legacy/{run_id}", { params: { path: { run_id: id } } }),
    ) as Record<string, unknown>;
  }, [path, ctx.tick]);
  const status = String(run?.["status"] ?? "");
  const migration = kind === "asset_migration";
  return (
    <>
      <h2>
        {migration ? "Asset migration" : "Legacy import"} <span class="mono">{id}</span>
      </h2>
      {error && <p role="alert">{error}</p>}
      {run && (
        <>
          <p>
            Status: <strong>{status}</strong>
            {run["dry_run"] ? " (dry run)" : ""}; started by {String(run["created_by"] ?? "?")} at{" "}
            {when(run["created_at"] as string)}; job{" "}
            {run["job_id"] ? <a href={`#/jobs/${String(run["job_id"])}`}>{String(run["job_id"])}</a> : "–"}
          </p>
          {ctx.canAct && migration && (
            <div class="actions" role="group" aria-label="Run actions">
              {(status === "running" || status === "rolling_back") && (
                <Confirmed
                  label="Resume"
                  question="Enqueue this run's job again? It goes on from its checkpoint (if its job is still queued or running, nothing changes)."
                  act={async () => {
                    must(
                      await ctx.api.POST("/api/admin/migrations/assets/{run_id}/resume", {
                        params: { path: { run_id: id } },
                      }),
                    );
                    reload();
                    return "Resumed.";
                  }}
                />
              )}
              {!run["dry_run"] && ["completed", "aborted", "failed"].includes(status) && (
                <Confirmed
                  label="Roll back"
                  danger
                  question="Roll this run back? Every asset it moved is put back into its source row, and its copies are deleted."
                  act={async () => {
                    must(
                      await ctx.api.POST("/api/admin/migrations/assets/{run_id}/rollback", {
                        params: { path: { run_id: id } },
                      }),
                    );
                    reload();
                    return "Rollback started.";
                  }}
                />
              )}
            </div>
          )}
          {!migration && (
            <p class="hint">
              A legacy import is rolled back from the command line (<code>questboard admin import-legacy rollback</code>
              ): it deletes sessions and files, which is not slow work an API request may do.
            </p>
          )}
          <Section title="Counts">
            <Json value={run["counts"]} label="Counts" />
          </Section>
          <Section title="Report">
            <Json value={run["report"]} label="Report" />
          </Section>
        </>
      )}
    </>
  );
}
