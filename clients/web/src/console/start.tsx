/**
 * Start a job of a kind operators may start, from a form built from the
 * payload's JSON Schema as the registry publishes it (booleans as
 * checkboxes, numbers, texts, choices; anything else as JSON). Viewers see
 * the kinds and their fields, and no start button.
 */

import { useState } from "preact/hooks";
import { must } from "../shared/api.js";
import type { Ctx } from "./app.js";
import type { Queue } from "./overview.js";

interface Schema {
  type?: string | string[];
  enum?: unknown[];
  items?: Schema;
  description?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
}

function typeOf(s: Schema): string {
  const t = Array.isArray(s.type) ? s.type.find((x) => x !== "null") : s.type;
  return t ?? "json";
}

export function Start({ ctx }: { ctx: Ctx }) {
  const startable = ctx.queues.filter((q) => q.operator_may_start);
  const [kind, setKind] = useState<string>();
  const chosen = startable.find((q) => q.kind === kind) ?? startable[0];
  return (
    <>
      <h2>Start a job</h2>
      <label>
        Kind
        <select name="kind" value={chosen?.kind} onChange={(e) => setKind(e.currentTarget.value)}>
          {startable.map((q) => (
            <option key={q.kind} value={q.kind}>
              {q.kind}
            </option>
          ))}
        </select>
      </label>
      {chosen && <StartForm ctx={ctx} queue={chosen} key={chosen.kind} />}
    </>
  );
}

function StartForm({ ctx, queue }: { ctx: Ctx; queue: Queue }) {
  const schema = (queue.payload_schema ?? {}) as Schema;
  const fields = Object.entries(schema.properties ?? {});
  const [outcome, setOutcome] = useState<{ id: string; created: boolean }>();
  const [error, setError] = useState<string>();
  const submit = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    setOutcome(undefined);
    const form = e.currentTarget as HTMLFormElement;
    const data = new FormData(form);
    const payload: Record<string, unknown> = {};
    try {
      for (const [name, field] of fields) {
        const type = typeOf(field);
        if (type === "boolean") {
          payload[name] = data.get(name) === "on";
        } else if (type === "array" && field.items?.enum) {
          const picked = data.getAll(name).map(String);
          if (picked.length) payload[name] = picked;
        } else {
          const raw = String(data.get(name) ?? "").trim();
          if (!raw) continue;
          if (type === "integer" || type === "number") payload[name] = Number(raw);
          else if (type === "string") payload[name] = raw;
          else payload[name] = JSON.parse(raw) as unknown;
        }
      }
    } catch {
      setError("A JSON field is not valid JSON.");
      return;
    }
    const unique = String(data.get("__unique_key") ?? "").trim();
    const runAt = String(data.get("__run_at") ?? "").trim();
    const got = await ctx.api.POST("/api/admin/jobs", {
      body: {
        kind: queue.kind,
        payload,
        ...(unique ? { unique_key: unique } : {}),
        ...(runAt ? { run_at: new Date(runAt).toISOString() } : {}),
      } as never,
    });
    try {
      const started = must(got);
      setOutcome({ id: started.job_id, created: started.created });
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };
  return (
    <form class="start" onSubmit={submit} aria-label={`Start ${queue.kind}`}>
      {fields.length === 0 && <p class="hint">This kind takes no payload.</p>}
      {fields.map(([name, field]) => (
        <Field key={name} name={name} field={field} />
      ))}
      <label>
        Unique key (optional)
        <input name="__unique_key" maxLength={255} />
      </label>
      <label>
        Not before (optional)
        <input name="__run_at" type="datetime-local" />
      </label>
      {ctx.canAct && <button type="submit">Start {queue.kind}</button>}
      {outcome && (
        <p role="status">
          {outcome.created ? "Started" : "Already queued with that key:"}{" "}
          <a href={`#/jobs/${outcome.id}`}>job {outcome.id}</a>
        </p>
      )}
      {error && <p role="alert">{error}</p>}
    </form>
  );
}

function Field({ name, field }: { name: string; field: Schema }) {
  const type = typeOf(field);
  const hint = field.description ? <span class="hint">{field.description}</span> : null;
  if (type === "boolean") {
    return (
      <label class="inline">
        <input type="checkbox" name={name} defaultChecked={field.default === true} />
        {name} {hint}
      </label>
    );
  }
  if (type === "array" && field.items?.enum) {
    return (
      <fieldset>
        <legend>{name}</legend>
        {hint}
        {field.items.enum.map((v) => (
          <label class="inline" key={String(v)}>
            <input type="checkbox" name={name} value={String(v)} />
            {String(v)}
          </label>
        ))}
      </fieldset>
    );
  }
  if (type === "string" && field.enum) {
    return (
      <label>
        {name} {hint}
        <select name={name}>
          <option value="">(default)</option>
          {field.enum.map((v) => (
            <option key={String(v)} value={String(v)}>
              {String(v)}
            </option>
          ))}
        </select>
      </label>
    );
  }
  if (type === "integer" || type === "number") {
    return (
      <label>
        {name} {hint}
        <input
          type="number"
          name={name}
          step={type === "integer" ? 1 : "any"}
          min={field.minimum}
          max={field.maximum}
        />
      </label>
    );
  }
  if (type === "string") {
    return (
      <label>
        {name} {hint}
        <input name={name} />
      </label>
    );
  }
  return (
    <label>
      {name} (JSON) {hint}
      <textarea name={name} rows={3} />
    </label>
  );
}
