/**
 * Jobs: filtered by kind, status, session, unique key, time and text in the
 * payload or errors (the filter lives in the address, so it can be linked),
 * keyset paged, and for operators: retry or cancel the selected jobs, or
 * every job the filter matches, after a confirmation that says how many.
 */

import { useEffect, useState } from "preact/hooks";
import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import { Confirmed, Paging, useLoaded, when } from "./ui.js";

const FIELDS = ["kind", "status", "session_id", "unique_key", "from", "to", "q"] as const;
type Field = (typeof FIELDS)[number];
const STATUSES = ["queued", "running", "retrying", "succeeded", "failed", "cancelled"];

/** The filter in the address, as the API takes it. */
function filterOf(params: URLSearchParams): Partial<Record<Field, string>> {
  const filter: Partial<Record<Field, string>> = {};
  for (const f of FIELDS) {
    const v = params.get(f);
    if (v) filter[f] = v;
  }
  return filter;
}

/** `datetime-local` text (the reader's zone) as an RFC 3339 instant. */
function instant(local: string): string | undefined {
  if (!local) return undefined;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

export function Jobs({ ctx }: { ctx: Ctx }) {
  const filter = filterOf(ctx.params);
  const [cursors, setCursors] = useState<string[]>([]);
  const cursor = cursors[cursors.length - 1];
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const key = JSON.stringify(filter);
  const [page, error, reload] = useLoaded(
    async () =>
      must(
        await ctx.api.GET("/api/admin/jobs", {
          // The filter is the address's text; the server judges it.
          params: { query: { ...filter, limit: 50, ...(cursor ? { cursor } : {}) } as never },
        }),
      ),
    [key, cursor, ctx.tick],
  );

  // The form's fields as typed, reset to the filter whenever it changes.
  const [draft, setDraft] = useState<Partial<Record<Field, string>>>(filter);
  useEffect(() => setDraft(filter), [key]);
  const edit = (field: Field) => (e: Event) =>
    setDraft({ ...draft, [field]: (e.currentTarget as HTMLInputElement | HTMLSelectElement).value });

  const apply = (e: Event) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const f of FIELDS) {
      let v = (draft[f] ?? "").trim();
      if ((f === "from" || f === "to") && v) v = instant(v) ?? "";
      if (v) next.set(f, v);
    }
    setCursors([]);
    setSelected(new Set());
    location.hash = `#/jobs${next.size ? `?${next}` : ""}`;
  };

  const bulk = async (action: "retry" | "cancel", selection: object, dry: boolean) =>
    must(
      await ctx.api.POST("/api/admin/jobs/bulk", {
        body: { action, ...selection, dry_run: dry } as never,
      }),
    );
  const told = (verb: string, done: { done: number; skipped_count: number; more: boolean }) => {
    setSelected(new Set());
    reload();
    return `${verb} ${done.done}; left alone ${done.skipped_count}${done.more ? "; more match: run it again" : ""}`;
  };
  const described = Object.entries(filter)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");

  // Shown in the reader's zone; a value being typed is shown as typed.
  const local = (v: string | undefined) => {
    if (!v) return "";
    if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$/.test(v)) return v;
    const d = new Date(v);
    if (Number.isNaN(d.getTime())) return "";
    return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
  };

  return (
    <>
      <h2>Jobs</h2>
      <form class="filters" onSubmit={apply} aria-label="Filter jobs">
        <label>
          Kind
          <select name="kind" value={draft.kind ?? ""} onChange={edit("kind")}>
            <option value="">any</option>
            {ctx.queues.map((q) => (
              <option key={q.kind} value={q.kind}>
                {q.kind}
              </option>
            ))}
          </select>
        </label>
        <label>
          Status
          <select name="status" value={draft.status ?? ""} onChange={edit("status")}>
            <option value="">any</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <label>
          Session
          <input name="session_id" value={draft.session_id ?? ""} onInput={edit("session_id")} placeholder="session id" />
        </label>
        <label>
          Unique key
          <input name="unique_key" value={draft.unique_key ?? ""} onInput={edit("unique_key")} maxLength={255} />
        </label>
        <label>
          Created from
          <input name="from" type="datetime-local" value={local(draft.from)} onInput={edit("from")} />
        </label>
        <label>
          Created before
          <input name="to" type="datetime-local" value={local(draft.to)} onInput={edit("to")} />
        </label>
        <label>
          Text in payload or error
          <input name="q" type="search" value={draft.q ?? ""} onInput={edit("q")} maxLength={200} />
        </label>
        <button type="submit">Apply filter</button>
      </form>
      {error && <p role="alert">{error}</p>}
      {ctx.canAct && (
        <div class="bulk" role="group" aria-label="Bulk actions">
          <Confirmed
            label={`Retry selected (${selected.size})`}
            question={`Retry the ${selected.size} selected jobs?`}
            act={async () => told("Retried", await bulk("retry", { job_ids: [...selected] }, false))}
          />
          <Confirmed
            label={`Cancel selected (${selected.size})`}
            danger
            question={`Cancel the ${selected.size} selected jobs?`}
            act={async () => told("Cancelled", await bulk("cancel", { job_ids: [...selected] }, false))}
          />
          <Confirmed
            label="Retry all matching"
            question={`Retry every job matching ${described || "no filter (all jobs)"}?`}
            prepare={async () => {
              const dry = await bulk("retry", { filter }, true);
              return `${dry.matched}${dry.more ? "+" : ""} jobs match; ${dry.skipped_count} of them are turns and are left alone.`;
            }}
            act={async () => told("Retried", await bulk("retry", { filter }, false))}
          />
          <Confirmed
            label="Cancel all matching"
            danger
            question={`Cancel every job matching ${described || "no filter (all jobs)"}?`}
            prepare={async () => {
              const dry = await bulk("cancel", { filter }, true);
              return `${dry.matched}${dry.more ? "+" : ""} jobs match; ${dry.skipped_count} of them are turns and are left alone.`;
            }}
            act={async () => told("Cancelled", await bulk("cancel", { filter }, false))}
          />
        </div>
      )}
      <table class="jobs">
        <thead>
          <tr>
            {ctx.canAct && (
              <th scope="col">
                <span class="sr">Select</span>
              </th>
            )}
            <th scope="col">Job</th>
            <th scope="col">Kind</th>
            <th scope="col">Status</th>
            <th scope="col">Attempts</th>
            <th scope="col">Run at</th>
            <th scope="col">Finished</th>
            <th scope="col">Last error</th>
          </tr>
        </thead>
        <tbody>
          {page?.jobs.map((j) => (
            <tr key={j.job_id} data-job={j.job_id}>
              {ctx.canAct && (
                <td>
                  <input
                    type="checkbox"
                    aria-label={`Select job ${j.job_id}`}
                    checked={selected.has(j.job_id)}
                    onChange={(e) => {
                      const next = new Set(selected);
                      if (e.currentTarget.checked) next.add(j.job_id);
                      else next.delete(j.job_id);
                      setSelected(next);
                    }}
                  />
                </td>
              )}
              <td>
                <a href={`#/jobs/${j.job_id}`}>{j.job_id}</a>
              </td>
              <td>{j.kind}</td>
              <td class={`status ${j.status}`}>{j.status}</td>
              <td>
                {j.attempts}/{j.max_attempts}
              </td>
              <td>{when(j.run_at)}</td>
              <td>{when(j.finished_at)}</td>
              <td class="error">{j.last_error ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {page && page.jobs.length === 0 && <p class="hint">No job matches.</p>}
      <Paging cursors={cursors} setCursors={setCursors} next={page?.next_cursor} />
    </>
  );
}
