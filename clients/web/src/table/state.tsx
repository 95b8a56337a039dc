/**
 * The game state, live: characters, actors, items, the current encounter
 * (and plugin data, read-only). Game masters (owner, `gm`) change values
 * and add or remove entries; each change is one update through the
 * store, which sends one at a time, applies it once the server confirmed
 * it, and on a version conflict reloads and says so. Game masters also
 * see what players' turns proposed and approve or reject it.
 */

import { useState } from "preact/hooks";
import { VersionConflict, type Json, type JsonObject, type StateOperation } from "@questboard/client";
import { must, type Api } from "../shared/api.js";
import type { LiveSession, Proposal } from "./live.js";

const COLLECTIONS = [
  ["characters", "Characters", "character"],
  ["actors", "Actors", "actor"],
  ["items", "Items", "item"],
] as const;

type Change = (ops: StateOperation[]) => Promise<void>;

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function show(v: Json | undefined): string {
  return typeof v === "string" ? v : JSON.stringify(v ?? null);
}

/** What a typed value means: the old value's type decides (text stays text). */
function parse(text: string, old: Json | undefined): Json {
  if (typeof old === "string") return text;
  try {
    return JSON.parse(text) as Json;
  } catch {
    return text;
  }
}

function entryName(entry: Json | undefined, i: number): string {
  return isObject(entry) && typeof entry["name"] === "string" && entry["name"] ? entry["name"] : `#${i + 1}`;
}

export function GameState({ live, api }: { live: LiveSession; api: Api }) {
  const [message, setMessage] = useState<{ text: string; alert: boolean }>();
  const snapshot = live.state;
  const gm = live.isGameMaster;
  const change: Change = async (operations) => {
    setMessage(undefined);
    try {
      const version = await live.update(operations);
      setMessage({ text: `Saved (version ${version}).`, alert: false });
    } catch (err) {
      if (err instanceof VersionConflict) {
        setMessage({
          text: "Someone else changed the state first. It has been reloaded; your change was not applied.",
          alert: true,
        });
      } else if (err instanceof Error && err.name === "Disconnected") {
        setMessage({ text: "Not saved: there is no connection to the server. Try again once the session is live.", alert: true });
      } else {
        setMessage({ text: err instanceof Error ? err.message : String(err), alert: true });
      }
    }
  };
  if (!snapshot) return <p class="hint">Loading the game state…</p>;
  const state = snapshot.state;
  return (
    <div class="state">
      <p class="hint" aria-label="State version">
        Version {snapshot.version}
      </p>
      {message && (message.alert ? <p role="alert">{message.text}</p> : <p role="status">{message.text}</p>)}
      {gm && <Proposals live={live} api={api} />}
      {COLLECTIONS.map(([key, title, one]) => (
        <Collection key={key} path={key} title={title} one={one} entries={Array.isArray(state[key]) ? (state[key] as Json[]) : []} gm={gm} change={change} />
      ))}
      <Encounter value={state["currentEncounter"]} gm={gm} change={change} />
      {isObject(state["pluginData"]) && Object.keys(state["pluginData"]).length > 0 && (
        <section aria-label="Plugin data">
          <h3>Plugin data</h3>
          <pre>{JSON.stringify(state["pluginData"], null, 2)}</pre>
        </section>
      )}
    </div>
  );
}

function Collection(props: { path: string; title: string; one: string; entries: Json[]; gm: boolean; change: Change }) {
  const [name, setName] = useState("");
  return (
    <section aria-label={props.title}>
      <h3>{props.title}</h3>
      {props.entries.length === 0 && <p class="hint">None.</p>}
      <ul class="entries">
        {props.entries.map((entry, i) => (
          <li key={i}>
            <Entry path={`${props.path}.${i}`} name={entryName(entry, i)} entry={entry} gm={props.gm} change={props.change} />
            {props.gm && (
              <button type="button" onClick={() => void props.change([{ operation: "pull", path: props.path, value: entry }])}>
                Remove {entryName(entry, i)}
              </button>
            )}
          </li>
        ))}
      </ul>
      {props.gm && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            const trimmed = name.trim();
            if (!trimmed) return;
            void props.change([{ operation: "push", path: props.path, value: { name: trimmed } }]);
            setName("");
          }}
        >
          <label>
            New {props.one} name
            <input value={name} maxLength={200} onInput={(e) => setName(e.currentTarget.value)} />
          </label>
          <button type="submit">Add {props.one}</button>
        </form>
      )}
    </section>
  );
}

function Entry(props: { path: string; name: string; entry: Json | undefined; gm: boolean; change: Change }) {
  const { entry } = props;
  if (!isObject(entry)) {
    return <span class="value">{show(entry)}</span>;
  }
  return (
    <div class="entry">
      <strong>{props.name}</strong>
      <dl>
        {Object.entries(entry)
          .filter(([k]) => k !== "name")
          .map(([k, v]) => (
            <div key={k} class="field">
              <dt>{k}</dt>
              <dd>{props.gm ? <FieldEditor label={`${props.name} ${k}`} path={`${props.path}.${k}`} value={v} change={props.change} /> : show(v)}</dd>
            </div>
          ))}
      </dl>
      {props.gm && <NewField name={props.name} path={props.path} change={props.change} />}
    </div>
  );
}

function FieldEditor(props: { label: string; path: string; value: Json; change: Change }) {
  const [draft, setDraft] = useState<string>();
  const text = draft ?? show(props.value);
  return (
    <form
      class="inline-form"
      onSubmit={(e) => {
        e.preventDefault();
        void props.change([{ operation: "set", path: props.path, value: parse(text, props.value) }]).then(() => setDraft(undefined));
      }}
    >
      <input aria-label={props.label} value={text} onInput={(e) => setDraft(e.currentTarget.value)} />
      <button type="submit" aria-label={`Set ${props.label}`}>
        Set
      </button>
    </form>
  );
}

function NewField(props: { name: string; path: string; change: Change }) {
  const [field, setField] = useState("");
  const [value, setValue] = useState("");
  return (
    <form
      class="inline-form"
      onSubmit={(e) => {
        e.preventDefault();
        if (!field.trim()) return;
        void props.change([{ operation: "set", path: `${props.path}.${field.trim()}`, value: parse(value, undefined) }]);
        setField("");
        setValue("");
      }}
    >
      <input aria-label={`New field of ${props.name}`} placeholder="field" value={field} onInput={(e) => setField(e.currentTarget.value)} />
      <input aria-label={`Value of the new field of ${props.name}`} placeholder="value" value={value} onInput={(e) => setValue(e.currentTarget.value)} />
      <button type="submit" aria-label={`Add a field to ${props.name}`}>
        Add
      </button>
    </form>
  );
}

function Encounter(props: { value: Json | undefined; gm: boolean; change: Change }) {
  const [name, setName] = useState("");
  const v = props.value;
  return (
    <section aria-label="Current encounter">
      <h3>Current encounter</h3>
      {isObject(v) ? (
        <>
          <Entry path="currentEncounter" name={entryName(v, 0)} entry={v} gm={props.gm} change={props.change} />
          {props.gm && (
            <button type="button" onClick={() => void props.change([{ operation: "set", path: "currentEncounter", value: null }])}>
              End encounter
            </button>
          )}
        </>
      ) : (
        <p class="hint">None.</p>
      )}
      {props.gm && !isObject(v) && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            if (!name.trim()) return;
            void props.change([{ operation: "set", path: "currentEncounter", value: { name: name.trim() } }]);
            setName("");
          }}
        >
          <label>
            Encounter name
            <input value={name} maxLength={200} onInput={(e) => setName(e.currentTarget.value)} />
          </label>
          <button type="submit">Start encounter</button>
        </form>
      )}
    </section>
  );
}

function describe(op: Json): string {
  if (!isObject(op)) return show(op);
  const value = "value" in op ? ` ${show(op["value"])}` : "";
  return `${show(op["operation"])} ${show(op["path"])}${value}`;
}

function Proposals({ live, api }: { live: LiveSession; api: Api }) {
  const [error, setError] = useState<string>();
  if (live.proposals.length === 0) return null;
  const decide = async (p: Proposal, approve: boolean) => {
    setError(undefined);
    try {
      const path = { session_id: live.sessionId, proposal_id: p.proposal_id };
      if (approve) {
        must(
          await api.POST("/api/sessions/{session_id}/state/proposals/{proposal_id}/approve", {
            params: { path },
            body: { version: live.state?.version ?? 0 },
          }),
        );
      } else {
        must(await api.POST("/api/sessions/{session_id}/state/proposals/{proposal_id}/reject", { params: { path }, body: {} }));
      }
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };
  return (
    <section aria-label="Proposals">
      <h3>Waiting for your approval</h3>
      {error && <p role="alert">{error}</p>}
      <ol>
        {live.proposals.map((p, i) => (
          <li key={p.proposal_id}>
            <p>
              From a turn by <span class="author">{p.proposed_for}</span>:
            </p>
            <ul>
              {(p.operations as unknown as Json[]).map((op, j) => (
                <li key={j}>
                  <code>{describe(op)}</code>
                </li>
              ))}
              {p.images.map((prompt, j) => (
                <li key={`i${j}`}>image: {prompt}</li>
              ))}
            </ul>
            <button type="button" aria-label={`Approve proposal ${i + 1}`} onClick={() => void decide(p, true)}>
              Approve
            </button>
            <button type="button" aria-label={`Reject proposal ${i + 1}`} onClick={() => void decide(p, false)}>
              Reject
            </button>
          </li>
        ))}
      </ol>
    </section>
  );
}
