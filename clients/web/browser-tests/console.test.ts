/**
 * The operators' console in real Chromium against a real `questboard dev`
 * (fresh database, the machine's Redis) whose media provider is a local
 * server speaking OpenAI's images API (it refuses some prompts and hangs
 * on others, which a real one cannot be made to do on cue): the issue's
 * own checks, end to end.
 */

import assert from "node:assert/strict";
import { createServer, type Server, type ServerResponse } from "node:http";
import { after, before, test } from "node:test";
import type { Browser, Page } from "playwright-core";
import { Questboard, until } from "../../typescript/test-integration/questboard.js";
import { freshScreenshots, launch, pageErrors, person, shot } from "./browser.js";

let qb: Questboard;
let browser: Browser;
let images: Server;
const hanging: ServerResponse[] = [];

// A 1x1 PNG.
const PNG =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/** OpenAI's `POST /v1/images/generations`: "refuse" in the prompt gets a
 * 400 (a request the provider will never accept), "hang" never gets an
 * answer, anything else a PNG. */
function imageServer(): Promise<number> {
  images = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      const prompt = String((JSON.parse(body || "{}") as { prompt?: unknown }).prompt ?? "");
      if (prompt.includes("refuse")) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: "Your request was rejected by the safety system." } }));
      } else if (prompt.includes("hang")) {
        hanging.push(res);
      } else {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ data: [{ b64_json: PNG }] }));
      }
    });
  });
  return new Promise((resolve) =>
    images.listen(0, "127.0.0.1", () => {
      const address = images.address();
      resolve(typeof address === "object" && address ? address.port : 0);
    }),
  );
}

before(async () => {
  freshScreenshots("console");
  const port = await imageServer();
  qb = await Questboard.start({
    QB_SCRIPTED_LATENCY_MS: "300",
    QB_MEDIA_PROVIDER: "openai",
    QB_MEDIA_BASE_URL: `http://127.0.0.1:${port}/v1`,
    QB_MEDIA_API_KEY: "test-key",
  });
  browser = await launch();
});

after(async () => {
  for (const res of hanging) res.destroy();
  await browser?.close();
  await qb?.stop();
  images?.close();
});

const OPERATOR = "olga-ops";

async function signInConsole(page: Page, user: string, access: "operator" | "viewer" | "player"): Promise<void> {
  await page.goto("/console");
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Access").selectOption(access);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function operatorPage(): Promise<Page> {
  const { page } = await person(browser, qb.baseUrl);
  await signInConsole(page, OPERATOR, "operator");
  await page.getByRole("status", { name: "Live updates" }).getByText("live").waitFor();
  return page;
}

async function screen(page: Page, name: string): Promise<void> {
  await page.getByRole("navigation", { name: "Screens" }).getByRole("link", { name, exact: true }).click();
}

/** Clicks `label`, then the confirmation's "Confirm". */
async function confirm(page: Page, label: string): Promise<void> {
  await page.getByRole("button", { name: label, exact: true }).first().click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  await dialog.getByRole("button", { name: "Confirm" }).click();
  await dialog.waitFor({ state: "detached" });
}

/** Like {@link confirm}, for a button that stays: returns what it says it did. */
async function confirmed(page: Page, label: string): Promise<string> {
  // Opening the confirmation clears the button's last outcome.
  await confirm(page, label);
  const outcome = page.locator(".confirmed [role=status]");
  await until("the action's outcome", async () => (await outcome.count()) > 0);
  return outcome.last().innerText();
}

async function turnsOf(user: string, session: string): Promise<{ status: string }[]> {
  const resp = await qb.call(user, "GET", `/api/sessions/${session}/turns`);
  return resp.body.turns as { status: string }[];
}

/** A media job of a member's session for `prompt`; returns its job id. */
async function mediaJob(session: string, prompt: string): Promise<string> {
  const resp = await qb.call("gina", "POST", `/api/sessions/${session}/media`, { type: "image", prompt });
  assert.equal(resp.status, 202, JSON.stringify(resp.body));
  return resp.body.job_id as string;
}

async function jobStatus(id: string): Promise<string> {
  const resp = await qb.call(OPERATOR, "GET", `/api/admin/jobs/${id}`, undefined, "operator");
  return resp.body.status as string;
}

test("an operator pauses turns, watches them queue in the session lanes, resumes them and sees them complete", async () => {
  const page = await operatorPage();
  const turnRow = page.locator('tr[data-kind="turn"]');
  await turnRow.waitFor();
  await confirmed(page, "Pause turn");
  await turnRow.getByText("paused", { exact: true }).waitFor();
  await shot(page, "overview-turn-paused");

  const name = '<b>Dragons</b> & <img src=x onerror="alert(1)">';
  const session = await qb.session("gina", name);
  for (const text of ["I open the door", "I light a torch", "I step inside"]) {
    const resp = await qb.call("gina", "POST", `/api/sessions/${session}/turns`, { text });
    assert.equal(resp.status, 202);
  }
  await screen(page, "Session lanes");
  const lane = page.locator(`tr[data-session="${session}"]`);
  await lane.waitFor();
  // The name is shown as the text it is.
  assert.equal(await lane.getByRole("link").first().innerText(), name);
  assert.equal(await lane.locator("b, img").count(), 0);
  assert.match(await lane.innerText(), /3/);
  assert.match(await lane.locator(".why").innerText(), /turn kind is paused/);
  await shot(page, "lanes-queued");
  // The lane's own page: its turns in order and its events.
  await lane.getByRole("link").first().click();
  await page.getByText("#3").waitFor();
  await page.getByText("turn.queued").first().waitFor();
  await shot(page, "lane-detail");

  await screen(page, "Overview");
  await confirmed(page, "Resume turn");
  await screen(page, "Session lanes");
  await page.getByText("No session has turns waiting.").waitFor({ timeout: 30_000 });
  const turns = await turnsOf("gina", session);
  assert.deepEqual(
    turns.map((t) => t.status),
    ["completed", "completed", "completed"],
  );
  assert.deepEqual(pageErrors(page), []);
});

test("an operator retries a failed job and cancels a running one from their detail pages", async () => {
  const session = await qb.session("gina", "Media hall");
  const failed = await mediaJob(session, "please refuse this");
  await until("the refused image to fail", async () => (await jobStatus(failed)) === "failed");
  const page = await operatorPage();
  await page.goto(`/console#/jobs?kind=media&status=failed`);
  await page.getByRole("link", { name: failed }).click();
  await page.getByTestId("job-status").getByText("failed").waitFor();
  await page.getByText("rejected the request (HTTP 400)").first().waitFor();
  await shot(page, "job-failed");
  await confirm(page, "Retry");
  // Run again: the item already failed, so the run finds nothing to do.
  await page.getByTestId("job-status").getByText("succeeded").waitFor({ timeout: 30_000 });

  const stuck = await mediaJob(session, "please hang forever");
  await until("the hanging image to run", async () => (await jobStatus(stuck)) === "running");
  await page.goto(`/console#/jobs?kind=media&status=running`);
  await page.getByRole("link", { name: stuck }).click();
  await page.getByTestId("job-status").getByText("running").waitFor();
  await shot(page, "job-running");
  await confirm(page, "Cancel");
  await page.getByTestId("job-status").getByText("cancelled").waitFor({ timeout: 30_000 });
  assert.deepEqual(pageErrors(page), []);
});

test("an operator bulk-retries every failed job of a kind after a count and a confirmation", async () => {
  const session = await qb.session("gina", "Refusals");
  const failed = [
    await mediaJob(session, "refuse one"),
    await mediaJob(session, "refuse two"),
    await mediaJob(session, "refuse three"),
  ];
  await until("three failures", async () => {
    const statuses = await Promise.all(failed.map(jobStatus));
    return statuses.every((s) => s === "failed");
  });
  const page = await operatorPage();
  await screen(page, "Jobs");
  await page.getByLabel("Kind").selectOption("media");
  await page.getByLabel("Status").selectOption("failed");
  await page.getByRole("button", { name: "Apply filter" }).click();
  for (const id of failed) await page.getByRole("link", { name: id }).waitFor();
  await page.getByRole("button", { name: "Retry all matching" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.getByText("3 jobs match").waitFor();
  assert.match(await dialog.innerText(), /kind=media, status=failed/);
  await shot(page, "bulk-confirm");
  await dialog.getByRole("button", { name: "Confirm" }).click();
  await page.getByText("Retried 3; left alone 0").waitFor();
  await until("the retried jobs to run", async () => {
    const statuses = await Promise.all(failed.map(jobStatus));
    return statuses.every((s) => s === "succeeded");
  });
  await page.getByText("No job matches.").waitFor();
});

test("an operator starts prune from the form and runs a schedule entry now, once", async () => {
  const page = await operatorPage();
  await screen(page, "Start a job");
  await page.getByRole("combobox", { name: "Kind" }).selectOption("prune");
  await page.getByRole("checkbox", { name: /dry_run/ }).check();
  await shot(page, "start-prune");
  await page.getByRole("button", { name: "Start prune" }).click();
  const started = page.getByRole("status").filter({ hasText: "Started" });
  await started.waitFor();
  await started.getByRole("link").click();
  await page.getByTestId("job-status").getByText("succeeded").waitFor({ timeout: 30_000 });
  assert.match(await page.locator('pre[aria-label="Payload"]').innerText(), /"dry_run": true/);

  await screen(page, "Schedule");
  const entry = page.locator('tr[data-entry="prune"]');
  await entry.waitFor();
  // Both clicks must fall in one minute (the run's unique key is per minute).
  while (new Date().getSeconds() > 45) await new Promise((r) => setTimeout(r, 1000));
  const first = await confirmed(page, "Run prune now");
  const id = /job (\w{26})/.exec(first)?.[1];
  assert.ok(id, first);
  assert.match(first, /^Started job/);
  const second = await confirmed(page, "Run prune now");
  assert.equal(second, `Already run this minute: job ${id}.`);
  await shot(page, "schedule-run-now");
  const runs = await qb.call(OPERATOR, "GET", "/api/admin/jobs?kind=prune&limit=100", undefined, "operator");
  const fromEntry = (runs.body.jobs as { metadata?: { run_now?: string } }[]).filter(
    (j) => j.metadata?.run_now === "true",
  );
  assert.equal(fromEntry.length, 1, "one run");
});

test("a viewer sees every screen without an action, and a forged action is refused", async () => {
  const { page } = await person(browser, qb.baseUrl);
  await signInConsole(page, "vera-viewer", "viewer");
  await page.locator('tr[data-kind="turn"]').waitFor();
  const actions = /^(Pause|Resume|Retry|Cancel|Run .* now|Start|Confirm)/;
  const check = async (what: string) => {
    const names = await page.getByRole("button").allInnerTexts();
    assert.deepEqual(
      names.filter((n) => actions.test(n.trim())),
      [],
      `${what}: ${names.join(", ")}`,
    );
    assert.equal(await page.getByRole("checkbox", { name: /^Select job/ }).count(), 0, what);
  };
  await check("overview");
  await shot(page, "viewer-overview");
  for (const name of ["Jobs", "Session lanes", "Schedule", "Start a job", "Runs", "Audit"]) {
    await screen(page, name);
    await page.getByRole("heading", { level: 2 }).first().waitFor();
    await check(name);
  }
  await screen(page, "Jobs");
  await page.getByRole("link", { name: /^[0-9A-Z]{26}$/ }).first().click();
  await page.getByTestId("job-status").waitFor();
  await check("a job");
  const forged = await page.evaluate(async () => {
    const token = sessionStorage.getItem("questboard.console.token") ?? "";
    const resp = await fetch("/api/admin/queues/turn/pause", {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
    });
    return resp.status;
  });
  assert.equal(forged, 403);
  assert.deepEqual(pageErrors(page).filter((e) => !e.includes("403")), []);
});

test("a player gets nothing", async () => {
  const { page } = await person(browser, qb.baseUrl);
  await signInConsole(page, "gina", "player");
  await page.getByRole("alert").getByText("may not use the console").waitFor();
  assert.equal(await page.locator("table").count(), 0);
  assert.equal(await page.getByRole("navigation").count(), 0);
  await shot(page, "player-refused");
});

test("every action is in the audit list with its operator", async () => {
  const page = await operatorPage();
  await screen(page, "Audit");
  const expected = ["queue.pause", "queue.resume", "job.retry", "job.cancel", "jobs.bulk_retry", "job.start", "schedule.run"];
  for (const action of expected) {
    const row = page.locator(`tr[data-action="${action}"]`).first();
    await row.waitFor();
    assert.match(await row.innerText(), new RegExp(OPERATOR));
    assert.match(await row.innerText(), /\bok\b/);
  }
  await page.getByLabel("Action").fill("queue.pause");
  await page.getByRole("button", { name: "Apply filter" }).click();
  await until("only pauses", async () => (await page.locator("tbody tr").count()) === 1);
  await shot(page, "audit");
});

test("the console serves a strict policy and takes a token handed over in the fragment", async () => {
  const resp = await fetch(`${qb.baseUrl}/console`);
  const csp = resp.headers.get("content-security-policy") ?? "";
  assert.match(csp, /script-src 'self';/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe/);
  const { page } = await person(browser, qb.baseUrl);
  await page.goto(`/console#token=${qb.token("night-ops", "viewer")}`);
  await page.getByText("night-ops (viewer)").waitFor();
  assert.doesNotMatch(page.url(), /token=/);
  // A hidden tab closes its live feed; shown again, it reopens it.
  const feed = page.getByRole("status", { name: "Live updates" });
  await feed.getByText("live").waitFor();
  const visibility = async (hidden: boolean) =>
    page.evaluate((h) => {
      Object.defineProperty(document, "hidden", { value: h, configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);
  await visibility(true);
  await feed.getByText("paused (tab hidden)").waitFor();
  await visibility(false);
  await feed.getByText("live").waitFor();
});
