// Two people in one room in headless Chromium (playwright-core, Debian's chromium): one
// uploads a document and asks; both watch the same answer stream in and open its citation.
// Run by scripts/check-clients.sh: CONFAB_URL (server), ARTIFACTS (screenshot folder),
// PLAYWRIGHT_CORE (module path).
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");
const base = process.env.CONFAB_URL;
const out = process.env.ARTIFACTS || ".";
const doc = "# Greenhouse care\n\nOrchids in the east greenhouse are watered with rain water every Tuesday morning.\n";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => { console.error("FAIL:", msg); await browser.close(); process.exit(1); };

try {
  const alice = await (await browser.newContext({ viewport: { width: 1100, height: 800 } })).newPage();
  const bob = await (await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true })).newPage();
  for (const [page, name] of [[alice, "Alice"], [bob, "Bob"]]) {
    // Each participant holds a key of the tenant (CONFAB_KEYS: two keys, comma-separated).
    const key = (process.env.CONFAB_KEYS || "").split(",")[name === "Alice" ? 0 : 1] || "";
    await page.goto(`${base}/?room=greenhouse${key ? `#key=${key}` : ""}`);
    await page.fill("#name", name);
    await page.click("#join button[type=submit]");
  }
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.querySelectorAll("#people li").length === 2, null, { timeout: 10000 });
  }

  // Alice uploads the document through the page and watches it get indexed.
  await alice.setInputFiles("#file", { name: "greenhouse.md", mimeType: "text/markdown", buffer: Buffer.from(doc) });
  await alice.click("#upload button[type=submit]");
  await alice.waitForFunction(() => /indexed/.test(document.querySelector("#docs li")?.textContent || ""), null, { timeout: 30000 });

  // Bob records what his page shows while the answer streams.
  await bob.evaluate(() => {
    window.__seen = [];
    new MutationObserver(() => {
      const t = document.querySelector(".msg.assistant .text");
      if (t) window.__seen.push(t.textContent);
    }).observe(document.getElementById("log"), { subtree: true, childList: true, characterData: true });
  });
  await alice.fill("#prompt", "How often are the orchids watered?");
  await alice.press("#prompt", "Enter");

  const answered = () => {
    const t = document.querySelector(".msg.assistant .text");
    return t && /Tuesday morning/.test(t.textContent) && t.querySelector("button.cite");
  };
  for (const page of [alice, bob]) await page.waitForFunction(answered, null, { timeout: 20000 });
  const texts = await Promise.all([alice, bob].map((p) => p.textContent(".msg.assistant .text")));
  if (texts[0] !== texts[1]) await fail(`different answers: ${JSON.stringify(texts)}`);
  const seen = await bob.evaluate(() => window.__seen);
  const partial = seen.filter((s) => s && s.length < texts[1].length);
  if (partial.length < 2) await fail(`no streaming seen by Bob: ${JSON.stringify(seen)}`);
  const prompts = await Promise.all([alice, bob].map((p) => p.textContent(".msg.user")));
  if (!prompts.every((p) => p.includes("Alice") && p.includes("orchids"))) await fail(`prompt: ${prompts}`);

  // Bob opens the citation: the source snippet appears.
  await bob.click("button.cite");
  const snippet = await bob.textContent(".sources details[open] .snippet");
  if (!/rain water/.test(snippet || "")) await fail(`snippet: ${snippet}`);

  await alice.screenshot({ path: `${out}/two-participants-alice.png`, fullPage: true });
  await bob.screenshot({ path: `${out}/two-participants-bob-phone.png`, fullPage: true });
  writeFileSync(`${out}/two-participants.txt`, `answer: ${texts[0]}\nbob saw ${partial.length} partial renders\n`);
  console.log(`browser: both saw "${texts[0]}" stream (${partial.length} partial renders on Bob's phone-width page); citation opened; screenshots in ${out}`);
} catch (e) {
  await fail(e.stack || String(e));
}
await browser.close();
