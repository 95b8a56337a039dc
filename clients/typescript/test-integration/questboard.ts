/**
 * A real questboard for the client's integration tests: `questboard dev`
 * (API, worker and scheduler in one process, the scripted game master) on a
 * fresh database of the machine's Postgres and its Redis, on a free port.
 * The binary is `QB_BIN` or the workspace's `target/debug/questboard`;
 * `DATABASE_URL` names a database of the server to create the scratch one
 * from (default `postgres://postgres@127.0.0.1:5432/postgres`).
 */

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";

/** The workspace: the nearest folder above this file with a Cargo.lock. */
function workspace(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, "Cargo.lock")) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}
const SECRET = "client-integration-secret-0123456789abcdef";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface Response {
  status: number;
  body: any;
}

export class Questboard {
  private constructor(
    readonly baseUrl: string,
    private readonly child: ChildProcess,
    private readonly adminUrl: string,
    private readonly database: string,
    private readonly bin: string,
    private readonly log: string[],
  ) {}

  /** Starts `questboard dev`; `env` adds to (or overrides) its environment. */
  static async start(env: Record<string, string> = {}): Promise<Questboard> {
    const bin = process.env["QB_BIN"] ?? path.join(workspace(), "target/debug/questboard");
    const adminUrl = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres";
    const database = `qbts_${Date.now()}_${randomUUID().replaceAll("-", "").slice(0, 12)}`;
    execFileSync("psql", [adminUrl, "-q", "-c", `CREATE DATABASE ${database}`]);
    const url = new URL(adminUrl);
    url.pathname = `/${database}`;
    const port = await freePort();
    const log: string[] = [];
    const child = spawn(bin, ["dev"], {
      env: {
        ...process.env,
        DATABASE_URL: url.toString(),
        REDIS_URL: process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379",
        QB_JWT_SECRET: SECRET,
        QB_HTTP_ADDR: `127.0.0.1:${port}`,
        QB_METRICS_ADDR: "127.0.0.1:0",
        QB_SCRIPTED_LATENCY_MS: "30",
        // Storage is not what these tests are about.
        QB_STORAGE_URL: "memory://",
        RUST_LOG: "warn",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout?.on("data", (d: Buffer) => log.push(d.toString()));
    child.stderr?.on("data", (d: Buffer) => log.push(d.toString()));
    const qb = new Questboard(`http://127.0.0.1:${port}`, child, adminUrl, database, bin, log);
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`questboard dev exited:\n${log.join("")}`);
      try {
        const ready = await fetch(`${qb.baseUrl}/readyz`);
        if (ready.status === 200) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`questboard dev never got ready:\n${log.join("")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return qb;
  }

  /** A token for `user` (with `access`: a console's operator or viewer),
   * minted by the binary with the dev secret. */
  token(user: string, access?: "operator" | "viewer"): string {
    const flags = access ? [`--${access}`] : [];
    return execFileSync(this.bin, ["token", "--user", user, ...flags], {
      env: { ...process.env, QB_JWT_SECRET: SECRET },
    })
      .toString()
      .trim();
  }

  async call(
    user: string,
    method: string,
    route: string,
    body?: unknown,
    access?: "operator" | "viewer",
  ): Promise<Response> {
    const init: RequestInit = {
      method,
      headers: {
        authorization: `Bearer ${this.token(user, access)}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    };
    const resp = await fetch(`${this.baseUrl}${route}`, init);
    const text = await resp.text();
    return { status: resp.status, body: text ? JSON.parse(text) : null };
  }

  /** A session owned by `owner` with `members` (players unless `gms`). */
  async session(owner: string, name: string, members: string[] = [], gms: string[] = []): Promise<string> {
    const created = await this.call(owner, "POST", "/api/sessions", { name });
    if (created.status !== 201) throw new Error(`create session: ${JSON.stringify(created)}`);
    const id: string = created.body.session_id;
    for (const user of [...members, ...gms]) {
      const role = gms.includes(user) ? "gm" : "player";
      const invite = await this.call(owner, "POST", `/api/sessions/${id}/invites`, { role });
      const accepted = await this.call(user, "POST", "/api/invites/accept", { token: invite.body.token });
      if (accepted.status >= 300) throw new Error(`accept: ${JSON.stringify(accepted)}`);
    }
    return id;
  }

  async stop(): Promise<void> {
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
    execFileSync("psql", [this.adminUrl, "-q", "-c", `DROP DATABASE IF EXISTS ${this.database} WITH (FORCE)`]);
  }
}

/** Waits until `check` holds (polling), or fails with `what`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
