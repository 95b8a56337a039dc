/**
 * The table in real Chromium against a real `questboard dev` (fresh
 * database, the machine's Redis, files on local disk): the design
 * documents' own checks, end to end.
 */

import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import type { Browser, Page } from "playwright-core";
import { Questboard, until } from "../../typescript/test-integration/questboard.js";
import { freshScreenshots, launch, pageErrors, person, shot, signIn } from "./browser.js";

let qb: Questboard;
let browser: Browser;

before(async () => {
  freshScreenshots();
  const files = mkdtempSync(path.join(os.tmpdir(), "qb-table-files-"));
  qb = await Questboard.start({
    // Replies stream over about a second, so chunks can be seen arriving.
    QB_SCRIPTED_LATENCY_MS: "900",
    QB_STORAGE_URL: `file://${files}`,
  });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await qb?.stop();
});

/** The transcript as the page shows it: one line per turn. */
async function transcript(page: Page): Promise<string[]> {
  return page.getByRole("list", { name: "Transcript" }).locator(":scope > li").allInnerTexts();
}

async function createSession(page: Page, name: string): Promise<void> {
  await page.getByLabel("Session name").fill(name);
  await page.getByRole("button", { name: "New session" }).click();
  await page.getByRole("heading", { level: 2, name }).waitFor();
}

async function sendTurn(page: Page, text: string): Promise<void> {
  await page.getByLabel("Your turn").fill(text);
  await page.getByRole("button", { name: "Send" }).click();
  // The box empties once the server took the turn.
  await until("the turn box to empty", async () => (await page.getByLabel("Your turn").inputValue()) === "");
  await until(`"${text}" in the transcript`, async () => (await transcript(page)).some((t) => t.includes(text)));
}

/** Waits until every turn shown has its whole reply. */
async function settled(page: Page, turns: number): Promise<string[]> {
  let lines: string[] = [];
  await until(
    `${turns} completed turns`,
    async () => {
      lines = await transcript(page);
      const done = await page.locator(".transcript > li.completed").count();
      return lines.length === turns && done === turns;
    },
    30_000,
  );
  return lines;
}

async function share(page: Page, role: "player" | "gm" = "player"): Promise<string> {
  await page.getByLabel("Invite as").selectOption(role);
  await page.getByRole("button", { name: "Share" }).click();
  const link = await page.getByLabel("Share link").inputValue();
  assert.match(link, /\/join#/);
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  assert.equal(copied, link, "the share link is on the clipboard");
  return link;
}

async function join(page: Page, user: string, link: string): Promise<void> {
  await page.goto(link);
  await page.getByLabel("User name").fill(user);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("You joined the session.").waitFor();
  // The token left the address bar at once.
  assert.equal(new URL(page.url()).hash, "");
}

test("seed 001: two people share a session and see the same transcript; a third session never shows", async () => {
  const alice = await person(browser, qb.baseUrl);
  const bob = await person(browser, qb.baseUrl);
  const carol = await person(browser, qb.baseUrl);

  await signIn(alice.page, "alice");
  await shot(alice.page, "alice-signed-in");
  await createSession(alice.page, "The Sunken Keep");
  const link = await share(alice.page);
  await shot(alice.page, "alice-shares");

  await join(bob.page, "bob", link);
  await bob.page.getByRole("heading", { level: 2, name: "The Sunken Keep" }).waitFor();
  await shot(bob.page, "bob-joined");

  // Carol plays her own session at the same time.
  await signIn(carol.page, "carol");
  await createSession(carol.page, "Carol's Crypt");
  await sendTurn(carol.page, "carol whispers the password nightshade");

  // Bob watches the reply to Alice's turn being written, chunk by chunk.
  await bob.page.evaluate(() => {
    const seen = new Set<string>();
    (window as unknown as { replyTexts: Set<string> }).replyTexts = seen;
    new MutationObserver(() => {
      for (const r of document.querySelectorAll(".transcript .reply")) seen.add(r.textContent ?? "");
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await sendTurn(alice.page, "Alice lights a torch.");
  await settled(bob.page, 1);
  const partials = await bob.page.evaluate(() => (window as unknown as { replyTexts: Set<string> }).replyTexts.size);
  assert.ok(partials > 2, `the reply streamed in (${partials} distinct texts seen)`);

  await sendTurn(bob.page, "Bob draws his sword.");
  await settled(alice.page, 2);
  const aliceSees = await settled(alice.page, 2);
  const bobSees = await settled(bob.page, 2);
  await shot(alice.page, "alice-two-turns");
  await shot(bob.page, "bob-two-turns");
  assert.deepEqual(bobSees, aliceSees, "both screens show the same transcript");
  assert.match(aliceSees[0] ?? "", /^alice Alice lights a torch\./);
  assert.match(aliceSees[1] ?? "", /^bob Bob draws his sword\./);
  for (const line of aliceSees) assert.ok(line.split("\n").length >= 2, `a reply under each turn: ${line}`);

  for (const p of [alice.page, bob.page]) {
    const text = await p.locator("body").innerText();
    assert.ok(!text.includes("nightshade"), "another session's words never show");
    assert.ok(!text.includes("Carol's Crypt"), "nor its name");
  }
  const carolText = await carol.page.locator("body").innerText();
  assert.ok(!carolText.includes("Alice lights a torch"));
  for (const p of [alice.page, bob.page, carol.page]) assert.deepEqual(pageErrors(p), []);
  await Promise.all([alice.context.close(), bob.context.close(), carol.context.close()]);
});

/** Alice-like owner with a fresh session shared with a player; both on the Play panel. */
async function table(owner: string, player: string, name: string) {
  const o = await person(browser, qb.baseUrl);
  const p = await person(browser, qb.baseUrl);
  await signIn(o.page, owner);
  await createSession(o.page, name);
  const link = await share(o.page);
  await join(p.page, player, link);
  await p.page.getByRole("heading", { level: 2, name }).waitFor();
  return { o, p };
}

async function live(page: Page): Promise<void> {
  await until("the socket to be live", async () => (await page.getByRole("status", { name: "Connection" }).innerText()) === "live");
}

test("a player offline while two turns are played sees each of them once when back", async () => {
  const { o, p } = await table("amber", "basil", "Offline Hollow");
  await sendTurn(o.page, "amber opens the gate.");
  await settled(p.page, 1);
  await live(p.page);

  await p.context.setOffline(true);
  await until("the player's socket to drop", async () =>
    (await p.page.getByRole("status", { name: "Connection" }).innerText()).startsWith("reconnecting"),
  );
  await sendTurn(o.page, "amber crosses the bridge.");
  await sendTurn(o.page, "amber knocks on the tower door.");
  await settled(o.page, 3);
  await shot(p.page, "player-offline");
  assert.equal((await transcript(p.page)).length, 1, "nothing arrives while offline");

  await p.context.setOffline(false);
  const back = await settled(p.page, 3);
  await live(p.page);
  await shot(p.page, "player-back-online");
  assert.deepEqual(back, await settled(o.page, 3));
  for (const missed of ["amber crosses the bridge.", "amber knocks on the tower door."]) {
    assert.equal(back.filter((line) => line.includes(missed)).length, 1, `"${missed}" shows once`);
  }
  assert.deepEqual(pageErrors(p.page).filter((e) => !e.includes("ERR_INTERNET_DISCONNECTED")), []);
  await Promise.all([o.context.close(), p.context.close()]);
});

/** The value the state panel shows for a field of an entry (read-only for players). */
async function field(page: Page, section: string, key: string): Promise<string> {
  const row = page.getByRole("region", { name: section }).locator(".field", { has: page.locator("dt", { hasText: key }) });
  const input = row.locator("input");
  return (await input.count()) > 0 ? input.inputValue() : row.locator("dd").innerText();
}

test("a game master's changes reach the player; a conflicting change from a second tab is reloaded, not applied", async () => {
  const { o, p } = await table("gwen", "hugo", "State Keep");
  await o.page.getByRole("tab", { name: "Game state" }).click();
  await p.page.getByRole("tab", { name: "Game state" }).click();
  await o.page.getByLabel("New character name").fill("Brienne");
  await o.page.getByRole("button", { name: "Add character" }).click();
  await p.page.getByRole("region", { name: "Characters" }).getByText("Brienne").waitFor();
  await o.page.getByLabel("New field of Brienne", { exact: true }).fill("hitPoints");
  await o.page.getByLabel("Value of the new field of Brienne").fill("12");
  await o.page.getByRole("button", { name: "Add a field to Brienne" }).click();
  await until("the player sees 12", async () => (await field(p.page, "Characters", "hitPoints")) === "12");
  assert.equal(await p.page.getByRole("button", { name: "Set Brienne hitPoints" }).count(), 0, "players cannot edit");
  await shot(p.page, "player-sees-state");

  // A second tab of the same game master, whose state events are held back.
  const tab2 = await o.context.newPage();
  let holding = true;
  const held: string[] = [];
  await tab2.routeWebSocket(/\/ws\/sessions\//, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((m) => {
      const text = typeof m === "string" ? m : m.toString();
      if (holding && text.includes('"type":"state.updated"')) held.push(text);
      else ws.send(text);
    });
  });
  await signIn(tab2, "gwen");
  await tab2.getByRole("heading", { level: 2, name: "State Keep" }).waitFor();
  await tab2.getByRole("tab", { name: "Game state" }).click();
  await until("tab 2 shows 12", async () => (await field(tab2, "Characters", "hitPoints")) === "12");

  await o.page.getByRole("textbox", { name: "Brienne hitPoints" }).fill("7");
  await o.page.getByRole("button", { name: "Set Brienne hitPoints" }).click();
  await until("the player sees 7", async () => (await field(p.page, "Characters", "hitPoints")) === "7");
  assert.equal(await field(tab2, "Characters", "hitPoints"), "12", "tab 2 is behind");

  await tab2.getByRole("textbox", { name: "Brienne hitPoints" }).fill("3");
  await tab2.getByRole("button", { name: "Set Brienne hitPoints" }).click();
  await tab2.getByRole("alert").getByText("Someone else changed the state first").waitFor();
  await until("tab 2 reloaded to 7", async () => (await field(tab2, "Characters", "hitPoints")) === "7");
  await shot(tab2, "second-tab-conflict");
  assert.equal(await field(p.page, "Characters", "hitPoints"), "7", "the stale change was not applied");

  holding = false;
  await tab2.getByRole("textbox", { name: "Brienne hitPoints" }).fill("3");
  await tab2.getByRole("button", { name: "Set Brienne hitPoints" }).click();
  await until("the player sees 3", async () => (await field(p.page, "Characters", "hitPoints")) === "3");
  await until("the first tab sees 3", async () => (await field(o.page, "Characters", "hitPoints")) === "3");
  await Promise.all([o.context.close(), p.context.close()]);
});

test("a player's turn that changes the state waits for the game master's approval", async () => {
  const { o, p } = await table("ivy", "jonas", "Proposal Hall");
  await o.page.getByRole("tab", { name: "Game state" }).click();
  await sendTurn(p.page, 'jonas pockets the lantern.\n/state push items {"name": "lantern"}');
  const proposals = o.page.getByRole("region", { name: "Proposals" });
  await proposals.getByText("push items").waitFor();
  await shot(o.page, "gm-sees-proposal");
  await p.page.getByRole("tab", { name: "Game state" }).click();
  assert.equal(await p.page.getByRole("region", { name: "Items" }).getByText("lantern").count(), 0, "not applied before approval");
  await proposals.getByRole("button", { name: "Approve proposal 1" }).click();
  await p.page.getByRole("region", { name: "Items" }).getByText("lantern").waitFor();
  await until("the proposal list to empty", async () => (await o.page.getByRole("region", { name: "Proposals" }).count()) === 0);
  await Promise.all([o.context.close(), p.context.close()]);
});

// The smallest valid PNG: one transparent pixel.
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
  "base64",
);

async function imageLoaded(page: Page, selector: string): Promise<void> {
  await until(`${selector} to load`, async () =>
    page.locator(selector).first().evaluate((img) => (img as HTMLImageElement).complete && (img as HTMLImageElement).naturalWidth > 0).catch(() => false),
  );
}

test("an image from a reply shows on both screens; a map the game master uploads opens for the player", async () => {
  const { o, p } = await table("kira", "lev", "Image Vault");
  await sendTurn(o.page, "kira raises the lantern.\n/image a flooded crypt lit by one lantern");
  for (const page of [o.page, p.page]) {
    await page.getByRole("img", { name: "a flooded crypt lit by one lantern" }).waitFor();
    await imageLoaded(page, ".transcript img");
  }
  await shot(p.page, "player-sees-image");

  await o.page.getByRole("tab", { name: "Maps and notes" }).click();
  await o.page.getByLabel("Kind").selectOption("map");
  await o.page.getByLabel("File to upload").setInputFiles({ name: "keep-map.png", mimeType: "image/png", buffer: PNG });
  await o.page.getByRole("button", { name: "Upload", exact: true }).click();
  await p.page.getByRole("tab", { name: "Maps and notes" }).click();
  await p.page.getByRole("button", { name: "Open keep-map.png" }).click();
  await imageLoaded(p.page, ".viewer img");
  await shot(p.page, "player-opens-map");
  assert.equal(await p.page.getByLabel("File to upload").count(), 0, "players do not upload");
  for (const page of [o.page, p.page]) assert.deepEqual(pageErrors(page), []);
  await Promise.all([o.context.close(), p.context.close()]);
});

test("markup in a session name, a turn and a user name is shown as text and runs nothing", async () => {
  const name = '<img src=x onerror="window.pwned=1">';
  const turn = '<img src=x onerror="window.pwned=2"><script>window.pwned=3</script>';
  const o = await person(browser, qb.baseUrl);
  await signIn(o.page, "mona");
  await createSession(o.page, name);
  const link = await share(o.page);
  const m = await person(browser, qb.baseUrl);
  await join(m.page, '<b onmouseover="window.pwned=4">mallory</b>', link);
  await sendTurn(o.page, turn);
  await settled(o.page, 1);
  await o.page.getByRole("tab", { name: "Members" }).click();
  await o.page.getByText('<b onmouseover="window.pwned=4">mallory</b>').waitFor();
  await shot(o.page, "markup-as-text");
  for (const page of [o.page, m.page]) {
    assert.equal(await page.locator(".session-head h2").innerText(), name);
    assert.equal(await page.locator('img[src="x"]').count(), 0, "no element was made from the text");
    assert.equal(await page.locator("b").count(), 0);
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined);
  }
  assert.ok((await transcript(m.page))[0]?.includes(turn));
  await Promise.all([o.context.close(), m.context.close()]);
});

test("a removed member's page stops showing the session", async () => {
  const { o, p } = await table("nora", "otto", "Closed Door");
  await sendTurn(o.page, "nora bars the door.");
  await settled(p.page, 1);
  await o.page.getByRole("tab", { name: "Members" }).click();
  await o.page.getByRole("button", { name: "Remove otto" }).click();
  await p.page.getByText("You are no longer in “Closed Door”.").waitFor();
  await until("the session to leave the player's page", async () => (await p.page.getByText("Closed Door").count()) <= 1);
  assert.equal(await p.page.getByRole("list", { name: "Transcript" }).count(), 0);
  assert.equal(await p.page.getByRole("button", { name: /Closed Door/ }).count(), 0);
  await shot(p.page, "removed-member");
  await p.page.reload();
  await p.page.getByText("Signed in as otto").waitFor();
  assert.equal(await p.page.getByText("nora bars the door.").count(), 0, "a reload does not bring it back");
  await Promise.all([o.context.close(), p.context.close()]);
});

test("the table works at phone width", async () => {
  const phone = await person(browser, qb.baseUrl, true);
  await signIn(phone.page, "pia");
  await createSession(phone.page, "Pocket Dungeon");
  await sendTurn(phone.page, "pia peeks around the corner.");
  await settled(phone.page, 1);
  const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px too wide)`);
  await shot(phone.page, "phone");
  await phone.context.close();
});

test("a double click, or sending again after the answer was lost, makes one turn", async () => {
  const solo = await person(browser, qb.baseUrl);
  await signIn(solo.page, "quinn");
  await createSession(solo.page, "Echo Chamber");
  await solo.page.getByLabel("Your turn").fill("quinn rings the bell once.");
  await solo.page.getByRole("button", { name: "Send" }).dblclick();
  await settled(solo.page, 1);

  // The server takes the next turn but its answer never reaches the page.
  let lost = 0;
  await solo.page.route("**/api/sessions/*/turns", async (route) => {
    if (route.request().method() === "POST" && lost === 0) {
      lost += 1;
      await route.fetch();
      await route.abort("connectionreset");
    } else {
      await route.continue();
    }
  });
  await solo.page.getByLabel("Your turn").fill("quinn rings the bell twice.");
  await solo.page.getByRole("button", { name: "Send" }).click();
  await solo.page.getByRole("alert").getByText("Send again to retry").waitFor();
  await solo.page.getByRole("button", { name: "Send" }).click();
  await until("the box to empty", async () => (await solo.page.getByLabel("Your turn").inputValue()) === "");
  const lines = await settled(solo.page, 2);
  assert.equal(lost, 1);
  assert.equal(lines.filter((l) => l.includes("rings the bell twice")).length, 1);
  assert.equal(lines.filter((l) => l.includes("rings the bell once")).length, 1);
  await solo.context.close();
});

test("dev sign-in refuses bad names with a clear error and hands out working tokens", async () => {
  const post = (body: unknown) =>
    fetch(`${qb.baseUrl}/dev/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const refusals: [unknown, number][] = [
    [{ user: "" }, 400],
    [{ user: "a\u0000b" }, 400],
    [{ user: "x".repeat(300) }, 400],
    [{ name: "alice" }, 422],
    ["alice", 422],
  ];
  for (const [bad, status] of refusals) {
    const resp = await post(bad);
    assert.equal(resp.status, status, JSON.stringify(bad));
    const body = (await resp.json()) as { error?: { code?: string; message?: string } };
    assert.ok(body.error?.message, "a message says why");
  }
  const ok = await post({ user: "rita" });
  assert.equal(ok.status, 200);
  const { token, user_id } = (await ok.json()) as { token: string; user_id: string };
  assert.equal(user_id, "rita");
  const sessions = await fetch(`${qb.baseUrl}/api/sessions`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(sessions.status, 200);
  const queues = (t: string) => fetch(`${qb.baseUrl}/api/admin/queues`, { headers: { authorization: `Bearer ${t}` } });
  assert.equal((await queues(token)).status, 403, "a player's token reaches no operators' route");
  for (const access of ["viewer", "operator"]) {
    const minted = (await (await post({ user: "olga", access })).json()) as { token: string };
    assert.equal((await queues(minted.token)).status, 200, access);
  }
  assert.equal((await post({ user: "olga", access: "root" })).status, 422);
});

test("an embedding app hands the page a token in the fragment: it leaves the address bar and never reaches localStorage", async () => {
  const requests: string[] = [];
  const { context, page } = await person(browser, qb.baseUrl);
  page.on("request", (r) => requests.push(r.url()));
  page.on("websocket", (ws) => requests.push(ws.url()));
  const token = qb.token("sam");
  await page.goto(`/#token=${token}`);
  await page.getByText("Signed in as sam").waitFor();
  assert.equal(new URL(page.url()).hash, "", "the token left the address bar");
  await createSession(page, "Quiet Room");
  await live(page);
  assert.ok(requests.some((u) => u.includes("/ws/sessions/")), "the socket opened");
  assert.ok(!requests.some((u) => u.includes(token.slice(-20))), "no request carried it in its URL");
  const stored = await page.evaluate(() => ({ local: JSON.stringify(localStorage), session: sessionStorage.getItem("questboard.token") }));
  assert.ok(!stored.local.includes(token.slice(-20)), "not in localStorage");
  assert.equal(stored.session, token, "kept for this tab only");
  await page.reload();
  await page.getByText("Signed in as sam").waitFor();
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("User name").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("questboard.token")), null);
  await context.close();
});

test("an archived session stays readable on every member's page and takes no more turns", async () => {
  const { o, p } = await table("sven", "tara", "Last Light");
  await sendTurn(o.page, "sven blows out the candle.");
  await settled(p.page, 1);
  o.page.once("dialog", (d) => void d.accept());
  await o.page.getByRole("button", { name: "Archive session" }).click();
  for (const page of [o.page, p.page]) {
    await page.getByText("“Last Light” was archived: it stays readable and takes no more turns.").waitFor();
    assert.equal((await transcript(page)).length, 1, "the transcript is still there");
    assert.equal(await page.getByLabel("Your turn").isDisabled(), true);
  }
  await shot(p.page, "archived");
  await Promise.all([o.context.close(), p.context.close()]);
});

test("the owner renames a session and every page follows; a player who leaves no longer sees it", async () => {
  const { o, p } = await table("uma", "vic", "Old Name");
  await o.page.getByRole("button", { name: "Rename" }).click();
  await o.page.getByLabel("New name").fill("New Name");
  await o.page.getByRole("button", { name: "Save name" }).click();
  for (const page of [o.page, p.page]) {
    await page.getByRole("heading", { level: 2, name: "New Name" }).waitFor();
    await page.getByRole("navigation", { name: "Sessions" }).getByRole("button", { name: /New Name/ }).waitFor();
  }
  assert.equal(await p.page.getByRole("button", { name: "Rename" }).count(), 0, "only the owner renames");
  p.page.once("dialog", (d) => void d.accept());
  await p.page.getByRole("button", { name: "Leave session" }).click();
  await p.page.getByText("You left “New Name”.").waitFor();
  // The list is read again after the notice shows.
  await until("the session to leave the player's list", async () =>
    (await p.page.getByRole("navigation", { name: "Sessions" }).getByRole("button", { name: /New Name/ }).count()) === 0,
  );
  await o.page.getByRole("tab", { name: "Members" }).click();
  await until("vic to leave the member list", async () => (await o.page.getByRole("list", { name: "Members" }).innerText()).includes("vic") === false);
  await Promise.all([o.context.close(), p.context.close()]);
});
