/**
 * The audit log: every operator action (through the API, the console or
 * the command line) with who, what, on what, when and how it ended,
 * newest first, filtered by actor, action or target.
 */

import { useState } from "preact/hooks";
import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import { Json, Paging, useLoaded, when } from "./ui.js";

export function Audit({ ctx }: { ctx: Ctx }) {
  const [filter, setFilter] = useState<{ actor?: string; action?: string; target?: string }>({});
  const [cursors, setCursors] = useState<string[]>([]);
  const cursor = cursors[cursors.length - 1];
  const [page, error] = useLoaded(
    async () =>
      must(
        await ctx.api.GET("/api/admin/audit", {
          params: { query: { ...filter, limit: 50, ...(cursor ? { cursor } : {}) } },
        }),
      ),
    [JSON.stringify(filter), cursor, ctx.tick],
  );
  return (
    <>
      <h2>Audit</h2>
      <form
        class="filters"
        aria-label="Filter the audit log"
        onSubmit={(e) => {
          e.preventDefault();
          const data = new FormData(e.currentTarget);
          const next: { actor?: string; action?: string; target?: string } = {};
          for (const k of ["actor", "action", "target"] as const) {
            const v = String(data.get(k) ?? "").trim();
            if (v) next[k] = v;
          }
          setCursors([]);
          setFilter(next);
        }}
      >
        <label>
          Actor
          <input name="actor" />
        </label>
        <label>
          Action
          <input name="action" placeholder="queue.pause, job.retry, …" />
        </label>
        <label>
          Target
          <input name="target" />
        </label>
        <button type="submit">Apply filter</button>
      </form>
      {error && <p role="alert">{error}</p>}
      <table class="audit">
        <thead>
          <tr>
            <th scope="col">When</th>
            <th scope="col">Actor</th>
            <th scope="col">Action</th>
            <th scope="col">Target</th>
            <th scope="col">Outcome</th>
            <th scope="col">Detail</th>
          </tr>
        </thead>
        <tbody>
          {page?.entries.map((e) => (
            <tr key={e.id} data-action={e.action}>
              <td>{when(e.at)}</td>
              <td>{e.actor}</td>
              <td>{e.action}</td>
              <td class="mono">{e.target}</td>
              <td>
                {e.outcome}
                {e.error ? `: ${e.error}` : ""}
              </td>
              <td>
                <Json value={e.detail} label={`Detail of ${e.action} on ${e.target}`} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && page.entries.length === 0 && <p class="hint">Nothing recorded.</p>}
      <Paging cursors={cursors} setCursors={setCursors} next={page?.next_cursor} />
    </>
  );
}
