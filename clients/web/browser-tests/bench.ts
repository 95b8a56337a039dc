/**
 * The table's figures for BENCHMARKS.md (a bench, not a test: it asserts
 * nothing about time). Against a real `questboard dev` (fresh database,
 * the scripted game master at 1 ms a reply, in-memory files) in real
 * Chromium:
 * - page load to an interactive transcript of a session with 500 turns
 *   (navigation start to every turn shown with its reply and the turn box
 *   usable), five loads;
 * - catch-up after about 1,000 missed events: a player's browser offline
 *   while 334 turns (3 events each) are played, then online: from the
 *   `online` event to the last reply shown, three rounds;
 * - the size of the page's JavaScript and CSS, raw and gzipped.
 * Run: `npm run bench` in clients/web (QB_BIN, DATABASE_URL, REDIS_URL).
 */

import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import type { Browser, Page } from "playwright-core";
import { Questboard, until } from "../../typescript/test-integration/questboard.js";
import { launch } from "./browser.js";

function stats(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  const median = s[Math.floor(s.length / 2)] ?? NaN;
  return `median ${median.toFixed(0)} ms (min ${s[0]?.toFixed(0)}, max ${s.at(-1)?.toFixed(0)}; ${s.length} runs)`;
}

async function playTurns(qb: Questboard, user: string, session: string, count: number): Promise<void> {
  for (let i = 1; i <= count; i++) {
    const r = await qb.call(user, "POST", `/api/sessions/${session}/turns`, { text: `turn ${i}: I search the room again.` });
    if (r.status !== 202) throw new Error(`turn ${i}: ${JSON.stringify(r)}`);
  }
  await until(
    `${count} turns done`,
    async () => {
      const r = await qb.call(user, "GET", `/api/sessions/${session}/turns?after_seq=${count - 1}&limit=1`);
      return r.body.turns?.[0]?.status === "completed";
    },
    300_000,
  );
}

async function lastSeq(qb: Questboard, user: string, session: string): Promise<number> {
  let after = 0;
  for (;;) {
    const r = await qb.call(user, "GET", `/api/sessions/${session}/events?after_seq=${after}&limit=1000`);
    const events: { seq: number }[] = r.body.events;
    if (events.length === 0) return after;
    after = events.at(-1)!.seq;
  }
}

/** A page signed in as `user` with `session` open, as a reload finds it. */
async function open(browser: Browser, qb: Questboard, user: string, session: string): Promise<Page> {
  const context = await browser.newContext({ baseURL: qb.baseUrl, viewport: { width: 1200, height: 900 } });
  const token = qb.token(user);
  await context.addInitScript(
    ([t, u, s]) => {
      sessionStorage.setItem("questboard.token", t!);
      localStorage.setItem(`questboard.session.${u}`, s!);
    },
    [token, user, session],
  );
  return context.newPage();
}

async function transcriptReady(page: Page, turns: number): Promise<number> {
  const handle = await page.waitForFunction(
    (n) => {
      const done = document.querySelectorAll(".transcript > li.completed").length;
      const box = document.querySelector<HTMLTextAreaElement>(".turnbox textarea");
      return done === n && box !== null && !box.disabled ? performance.now() : false;
    },
    turns,
    { polling: "raf", timeout: 120_000 },
  );
  return (await handle.jsonValue()) as number;
}

async function main(): Promise<void> {
  const qb = await Questboard.start({ QB_SCRIPTED_LATENCY_MS: "1", RUST_LOG: "error" });
  const browser = await launch();
  try {
    // 1. A session with 500 turns.
    const big = await qb.session("owner", "Five Hundred Turns");
    await playTurns(qb, "owner", big, 500);
    const loads: number[] = [];
    for (let run = 0; run < 6; run++) {
      const page = await open(browser, qb, "owner", big);
      await page.goto("/");
      const at = await transcriptReady(page, 500);
      if (run > 0) loads.push(at); // the first warms the server's caches
      await page.context().close();
    }
    console.log(`page load to an interactive transcript of 500 turns: ${stats(loads)}`);

    // 2. Catch-up after ~1,000 missed events.
    const catchUps: number[] = [];
    let missed = 0;
    for (let round = 0; round < 3; round++) {
      const id = await qb.session("gm", `Catch-up ${round}`, ["player"]);
      const page = await open(browser, qb, "player", id);
      await page.goto("/");
      await until("the socket to be live", async () => (await page.locator(".session-head .badge").first().innerText()) === "live");
      const before = await lastSeq(qb, "gm", id);
      await page.context().setOffline(true);
      await until("offline", async () => (await page.locator(".session-head .badge").first().innerText()) !== "live");
      await playTurns(qb, "gm", id, 334);
      missed = (await lastSeq(qb, "gm", id)) - before;
      await page.evaluate(() => {
        addEventListener("online", () => ((window as unknown as { backAt: number }).backAt = performance.now()), { once: true });
      });
      await page.context().setOffline(false);
      const done = await transcriptReady(page, 334);
      const backAt = await page.evaluate(() => (window as unknown as { backAt: number }).backAt);
      catchUps.push(done - backAt);
      await page.context().close();
    }
    console.log(`catch-up after ${missed} missed events (334 turns) to the last reply shown: ${stats(catchUps)}`);

    // 3. Size.
    for (const file of ["table.js", "table.css"]) {
      const bytes = readFileSync(new URL(`../../../dist/${file}`, import.meta.url));
      console.log(`${file}: ${(bytes.length / 1024).toFixed(1)} KiB, ${(gzipSync(bytes, { level: 9 }).length / 1024).toFixed(1)} KiB gzipped`);
    }
  } finally {
    await browser.close();
    await qb.stop();
  }
}

await main();
