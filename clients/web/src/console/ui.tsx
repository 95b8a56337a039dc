/**
 * The console's small shared pieces: times and waits as people read them,
 * JSON shown as text, a confirmation step for every action that changes
 * something, and the load-and-reload-on-tick hook the screens use.
 */

import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { messageOf } from "../shared/api.js";

/** A time as the reader's locale writes it (absent: a dash). */
export function when(at: string | null | undefined): string {
  if (!at) return "–";
  const d = new Date(at);
  return Number.isNaN(d.getTime()) ? at : d.toLocaleString();
}

/** Seconds as `4 s`, `3 min`, `2 h`. */
export function span(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** JSON as indented text in a `<pre>` (text, never markup). */
export function Json({ value, label }: { value: unknown; label: string }) {
  return (
    <pre class="json" aria-label={label} tabIndex={0}>
      {value === undefined || value === null ? "–" : JSON.stringify(value, null, 2)}
    </pre>
  );
}

/** Loads with `load` now, when `deps` change and on every live tick. */
export function useLoaded<T>(load: () => Promise<T>, deps: unknown[]): [T | undefined, string | undefined, () => void] {
  const [value, setValue] = useState<T>();
  const [error, setError] = useState<string>();
  const [again, setAgain] = useState(0);
  useEffect(() => {
    let current = true;
    load().then(
      (v) => {
        if (current) {
          setValue(v);
          setError(undefined);
        }
      },
      (e: unknown) => current && setError(e instanceof Error ? e.message : messageOf(e)),
    );
    return () => {
      current = false;
    };
  }, [...deps, again]);
  return [value, error, () => setAgain((n) => n + 1)];
}

/** An action that asks first: the button opens a confirmation naming what
 * will happen; only "Confirm" acts. `prepare` may say more (a count). */
export function Confirmed({
  label,
  question,
  prepare,
  act,
  danger,
}: {
  label: string;
  question: string;
  prepare?: () => Promise<string>;
  act: () => Promise<string>;
  danger?: boolean;
}) {
  const [open, setOpen] = useState(false);
  const [detail, setDetail] = useState<string>();
  const [outcome, setOutcome] = useState<string>();
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const start = async () => {
    setOutcome(undefined);
    setError(undefined);
    setDetail(undefined);
    try {
      if (prepare) setDetail(await prepare());
      setOpen(true);
    } catch (e) {
      setError(e instanceof Error ? e.message : messageOf(e));
    }
  };
  return (
    <span class="confirmed">
      <button type="button" class={danger ? "danger" : undefined} onClick={start} disabled={busy}>
        {label}
      </button>
      {open && (
        <div role="dialog" aria-modal="true" aria-label={question} class="confirm">
          <p>{question}</p>
          {detail && <p class="detail">{detail}</p>}
          <button
            type="button"
            onClick={async () => {
              setBusy(true);
              try {
                setOutcome(await act());
                setOpen(false);
              } catch (e) {
                setError(e instanceof Error ? e.message : messageOf(e));
                setOpen(false);
              } finally {
                setBusy(false);
              }
            }}
            disabled={busy}
          >
            Confirm
          </button>
          <button type="button" onClick={() => setOpen(false)}>
            Back
          </button>
        </div>
      )}
      {outcome && <span role="status">{outcome}</span>}
      {error && <span role="alert">{error}</span>}
    </span>
  );
}

/** A section with a heading. */
export function Section({ title, children }: { title: string; children: ComponentChildren }) {
  return (
    <section aria-label={title}>
      <h2>{title}</h2>
      {children}
    </section>
  );
}

/** Keyset paging: a stack of cursors (the pages seen), newest first. */
export function Paging({
  cursors,
  setCursors,
  next,
}: {
  cursors: string[];
  setCursors: (c: string[]) => void;
  next: string | null | undefined;
}) {
  return (
    <div class="paging">
      <button type="button" disabled={cursors.length === 0} onClick={() => setCursors([])}>
        Newest
      </button>
      <button type="button" disabled={cursors.length === 0} onClick={() => setCursors(cursors.slice(0, -1))}>
        Newer
      </button>
      <button type="button" disabled={!next} onClick={() => next && setCursors([...cursors, next])}>
        Older
      </button>
    </div>
  );
}
