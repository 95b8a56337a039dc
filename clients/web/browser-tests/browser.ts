/**
 * The browser the table's tests drive: Debian's Chromium (`QB_CHROMIUM`,
 * default `/usr/bin/chromium`) under playwright-core, headless, with the
 * flags this machine's closed network needs (no background fetches, no
 * updates, no QUIC) and a fresh profile per launch. Screenshots of each
 * step go to `QB_SCREENSHOTS/<page>` (default `target/screenshots/table`
 * and `.../console` in the workspace), kept by CI as artifacts.
 */

import { mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
// build/web/browser-tests -> clients/web -> the workspace
const workspace = path.resolve(here, "../../../../..");

let screenshots = "";

/** Empties the screenshot folder of this test file's page (`table`,
 * `console`: under `QB_SCREENSHOTS`, default `target/screenshots`): it
 * keeps only this run's steps. */
export function freshScreenshots(pageName = "table"): void {
  screenshots = path.join(process.env["QB_SCREENSHOTS"] ?? path.join(workspace, "target/screenshots"), pageName);
  rmSync(screenshots, { recursive: true, force: true });
  mkdirSync(screenshots, { recursive: true });
}

export async function launch(): Promise<Browser> {
  // Playwright gives every launch a fresh, empty profile directory.
  return chromium.launch({
    executablePath: process.env["QB_CHROMIUM"] ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A new context (its own cookies and storage: another person) on `baseUrl`. */
export async function person(browser: Browser, baseUrl: string, mobile = false): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({
    baseURL: baseUrl,
    ...(mobile ? { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true } : { viewport: { width: 1200, height: 900 } }),
  });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: baseUrl });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(msg.text());
  });
  (page as Page & { errors: string[] }).errors = errors;
  return { context, page };
}

/** What went wrong in the page (uncaught errors, console errors, CSP reports). */
export function pageErrors(page: Page): string[] {
  return (page as Page & { errors?: string[] }).errors ?? [];
}

let step = 0;
/** Keeps a screenshot of `page` named after the test step. */
export async function shot(page: Page, name: string): Promise<void> {
  step += 1;
  const file = path.join(screenshots, `${String(step).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

/** Signs in by name on the dev server's table. */
export async function signIn(page: Page, user: string, at = "/"): Promise<void> {
  await page.goto(at);
  await page.getByLabel("User name").fill(user);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText(`Signed in as ${user}`).waitFor();
}
