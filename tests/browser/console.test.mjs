// Drives the ota operator console in headless Chromium against a real server with real agents
// (the demo lab, started by tests/tests/e2e/console.rs, which passes everything in env vars).
// Checks: sign-in; a rollout started from the create form after its dry-run plan, watched live
// to completed; a broken canary aborted and its devices back on the good release; a flag
// killed; an operator without the approver role sees no approve button and a forged approve
// is refused; an overview left open follows the rollout live; server labels edited on a
// device's page and found by the devices filter; axe-core finds no violations on any page. Screenshots of every page go to
// OTA_BROWSER_OUT. Any failed check throws: a non-zero exit.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { createRequire } from "node:module";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("OTA_CONSOLE_URL");
const admin = env("OTA_CONSOLE_ADMIN_TOKEN");
const steerer = env("OTA_CONSOLE_OPERATOR_TOKEN");
const goodVersion = env("OTA_CONSOLE_GOOD_VERSION");
const brokenVersion = env("OTA_CONSOLE_BROKEN_VERSION");
const approvalRollout = env("OTA_CONSOLE_APPROVAL_ROLLOUT");
const flag = env("OTA_CONSOLE_FLAG");
const devices = Number(env("OTA_CONSOLE_DEVICES"));
const out = env("OTA_BROWSER_OUT");
const executable = process.env.OTA_TEST_CHROMIUM || "/usr/bin/chromium";
mkdirSync(out, { recursive: true });

const require = createRequire(import.meta.url);
const axeSource = readFileSync(join(dirname(require.resolve("axe-core")), "axe.min.js"), "utf8");

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

// The rollout ids ("#5") of the table captioned `caption` on the page decrease from the top.
async function newestFirst(page, caption) {
  const ids = await page.locator(`table:has(caption:text("${caption}")) tbody tr td:first-child`).allInnerTexts();
  const numbers = ids.map((id) => Number(id.replace("#", "")));
  check(numbers.length > 1 && numbers.every((n, i) => i === 0 || numbers[i - 1] > n), `${caption}: newest first (${ids.join(" ")})`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
}

// axe-core in the page; the CSP allows only the console's own script, so it is injected by
// the test harness (page.evaluate), not by a <script> tag.
async function axe(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
  });
  check(result.length === 0, `axe: no violations on ${name}${result.length ? "\n  " + result.join("\n  ") : ""}`);
}

async function signIn(context, token) {
  const page = await context.newPage();
  page.on("dialog", (dialog) => dialog.accept());
  await page.goto(`${base}/login`);
  await page.getByLabel("Operator token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${base}/`);
  return page;
}

// Waits until `f` answers true, reloading nothing: for live regions.
async function eventually(what, f, seconds = 90) {
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out waiting for: ${what}`);
}

async function startRollout(page, version, waves, bake) {
  await page.goto(`${base}/rollouts/new`);
  const option = page.locator("#release option", { hasText: `${version} (` }).first();
  await page.getByLabel("Release").selectOption(await option.getAttribute("value"));
  await page.getByLabel("Waves (cumulative percent)").fill(waves);
  await page.getByLabel("Bake time (seconds)").fill(String(bake));
  await page.getByRole("button", { name: "Show plan" }).click();
  const plan = page.locator("#plan");
  await plan.waitFor();
  const text = await plan.innerText();
  check(text.includes(`${devices} targets`), `the plan of ${version} shows ${devices} targets`);
  return plan;
}

// A fresh profile directory each run (Playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "ota-chromium-")), {
  executablePath: executable,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const started = Date.now();
try {
  // An operator without the approver role: no approve button, and a forged approve is refused.
  const carol = await signIn(context, steerer);
  await carol.goto(`${base}/rollouts/${approvalRollout}`);
  check((await carol.locator("#rollout-status").innerText()) === "awaiting-approval", "the forced reinstall awaits approval");
  check((await carol.locator("#approve-button").count()) === 0, "carol (operator) is not offered Approve");
  check((await carol.locator("#abort-button").count()) === 1, "carol (operator) is offered Abort");
  await shot(carol, "rollout-awaiting-approval-operator");
  const csrf = await carol.locator('input[name="csrf"]').first().inputValue();
  const forged = await carol.request.post(`${base}/rollouts/${approvalRollout}/approve`, {
    form: { csrf },
    maxRedirects: 0,
  });
  check(forged.status() === 403, `a forged approve by carol is refused (${forged.status()})`);
  check((await forged.text()).includes("needs the approver role"), "the refusal names the role");
  const noCsrf = await carol.request.post(`${base}/rollouts/${approvalRollout}/abort`, { form: {}, maxRedirects: 0 });
  check(noCsrf.status() === 403, "a form without the CSRF token is refused");
  await carol.goto(`${base}/audit?kind=access-denied`);
  check((await carol.locator("table").innerText()).includes("carol"), "the audit log shows carol's access-denied event");
  await shot(carol, "audit-access-denied");
  await carol.close();
  await context.clearCookies();

  const login = await context.newPage();
  await login.goto(`${base}/login`);
  await shot(login, "login");
  await axe(login, "login");
  await login.close();
  const page = await signIn(context, admin);
  await shot(page, "overview");
  await axe(page, "overview");

  // Clear the way: alice aborts the forced reinstall (its targets are the whole fleet).
  await page.goto(`${base}/rollouts/${approvalRollout}`);
  await page.locator("#abort-button").click();
  await eventually("the forced reinstall aborted", async () => (await page.locator("#rollout-status").innerText()) === "aborted");

  // An overview left open in another tab: it must follow the rollout without a reload (the
  // marker set in its window survives only if the page is never loaded again).
  const overviewTab = await context.newPage();
  await overviewTab.goto(`${base}/`);
  await overviewTab.evaluate(() => { window.otaNotReloaded = true; });
  const overviewBefore = await overviewTab.locator("[data-live]").innerText();

  // A rollout from the create form, after its plan, watched live to completed.
  const plan = await startRollout(page, goodVersion, "50,100", 1);
  await shot(page, "create-plan");
  await axe(page, "create form with plan");
  await plan.getByRole("button", { name: "Start rollout" }).click();
  await page.waitForURL(/\/rollouts\/\d+$/);
  const goodUrl = page.url();
  await axe(page, "rollout detail (running)");
  await eventually("the good rollout completed (live, no reload)", async () => (await page.locator("#rollout-status").innerText()) === "completed", 180);
  check(page.url() === goodUrl, "the page was not reloaded");
  check((await page.locator("[data-live]").getAttribute("data-done")) === "true", "the live stream ended with the rollout");
  await shot(page, "rollout-completed");
  await eventually(`the open overview shows ${goodVersion} (live)`, async () => {
    const now = await overviewTab.locator("[data-live]").innerText();
    return now !== overviewBefore && now.includes(goodVersion);
  }, 60);
  check(await overviewTab.evaluate(() => window.otaNotReloaded === true), "the overview was updated in place, not reloaded");
  await shot(overviewTab, "overview-live");
  await overviewTab.close();

  // A broken canary, aborted from the console: the canary falls back to the good release.
  await startRollout(page, brokenVersion, "20,100", 600);
  await page.getByRole("button", { name: "Start rollout" }).click();
  await page.waitForURL(/\/rollouts\/\d+$/);
  const brokenUrl = page.url();
  await eventually("the canary is installing or in trial", async () => {
    const text = await page.locator("[data-live]").innerText();
    return /\b(downloading|installing|trial|rolled-back|failed)\b/.test(text) || (await page.locator("#rollout-status").innerText()) === "aborted";
  }, 120);
  await shot(page, "rollout-broken-canary");
  if ((await page.locator("#abort-button").count()) > 0) {
    await page.getByLabel("Reason").fill("broken canary (browser test)");
    await page.locator("#abort-button").click();
  }
  await page.goto(brokenUrl);
  await eventually("the broken rollout aborted", async () => (await page.locator("#rollout-status").innerText()) === "aborted");
  await shot(page, "rollout-aborted");
  await axe(page, "rollout detail (aborted)");
  await eventually(`every device back on ${goodVersion}`, async () => {
    await page.goto(`${base}/devices?filter=${encodeURIComponent(`version=${goodVersion}`)}`);
    return (await page.locator(".pager").innerText()).startsWith(`${devices} devices`);
  }, 120);
  await shot(page, "devices-after-rollback");

  // Devices: a bad filter's error, then a device's page.
  await page.goto(`${base}/devices?filter=${encodeURIComponent("colour=blue")}`);
  check((await page.locator("#filter-error").innerText()).includes("unknown field 'colour' at column 1"), "a bad filter shows its error");
  check((await page.locator("pre.caret").innerText()) === "colour=blue\n^", "a caret marks the column of the error");
  await axe(page, "devices (filter error)");
  await page.goto(`${base}/devices?sort=last-seen&dir=desc`);
  await shot(page, "devices");
  await axe(page, "devices");
  await page.locator("#devices tbody a").first().click();
  await page.waitForURL(/\/devices\/.+/);
  check((await page.locator("main").innerText()).includes("Known-good release"), "the device page shows its known-good release");
  await shot(page, "device-detail");
  await axe(page, "device detail");
  // Server labels, edited on the device's page, then found by the devices filter.
  const deviceUrl = page.url();
  await page.getByLabel("Server labels (one key=value a line)").fill("site=browser-test\nrack=r7");
  await page.getByRole("button", { name: "Save labels" }).click();
  await page.waitForURL(deviceUrl);
  const facts = await page.locator("main").innerText();
  check(facts.includes("rack=r7, site=browser-test"), "the saved server labels are on the device's page");
  await page.goto(`${base}/devices?filter=${encodeURIComponent("label:site=browser-test and label:rack=r7")}`);
  check((await page.locator(".pager").innerText()).startsWith("1 devices"), "the devices filter finds the labelled device");
  check((await page.locator("#devices tbody a").first().getAttribute("href")) === new URL(deviceUrl).pathname, "the one found is the device that was labelled");

  // Flags: the kill switch.
  await page.goto(`${base}/flags`);
  await page.locator(`#kill-${flag}`).click();
  await page.waitForURL(`${base}/flags`);
  check((await page.locator("table").first().innerText()).includes("killed"), `flag ${flag} is killed`);
  check((await page.locator(`#revive-${flag}`).count()) === 1, "a killed flag offers Revive");
  const trail = await page.locator('table:has(caption:text("Flag changes")) tbody tr').first().innerText();
  check(trail.includes(flag) && trail.includes("killed") && trail.includes("alice"), `the flags' audit trail shows the kill first (${trail.replace(/\s+/g, " ")})`);
  await shot(page, "flags");
  await axe(page, "flags");

  for (const [path, name] of [["/releases", "releases"], ["/rollouts", "rollouts"], ["/audit", "audit"], ["/trust", "trust"], ["/", "overview-after"]]) {
    await page.goto(`${base}${path}`);
    await shot(page, name);
    await axe(page, name);
  }
  // Trust: the set in force and which devices use it (never rotated here: all of them).
  await page.goto(`${base}/trust`);
  const trustDevices = await page.locator("#trust-devices").innerText();
  check(trustDevices.startsWith(`${devices} of ${devices} device(s)`), `trust: every device uses the set (${trustDevices})`);
  // Releases: which devices run each one, and the link to them.
  await page.goto(`${base}/releases`);
  const goodRow = page.locator("tbody tr", { hasText: goodVersion }).first();
  const runningLink = goodRow.locator('a[href^="/devices?filter=digest"]');
  const running = Number(await runningLink.innerText());
  check(running > 0, `releases: ${goodVersion} runs on ${running} device(s)`);
  await runningLink.click();
  await page.waitForURL(/\/devices\?filter=digest/);
  const listed = await page.locator("table tbody tr").count();
  check(listed === running, `the release's link lists those ${running} devices (listed ${listed})`);
  await page.goto(`${base}/`);
  // Rollouts, on the overview and on their list: the newest first.
  await newestFirst(page, "Recent rollouts");
  await page.goto(`${base}/rollouts`);
  await newestFirst(page, "Rollouts, newest first");

  // Keyboard: the skip link is the first stop and leads to the content.
  await page.keyboard.press("Tab");
  check((await page.evaluate(() => document.activeElement?.textContent)) === "Skip to content", "the first Tab stop is the skip link");

  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${base}/login`);
  await page.goto(`${base}/devices`);
  check(page.url() === `${base}/login`, "signed out: pages lead to the sign-in form");
  console.log(`browser checks passed in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${out}`);
} finally {
  await context.close();
}
