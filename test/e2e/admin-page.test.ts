// The admin page in a real headless browser (Debian's chromium driven by playwright-core) against
// a real Stowage process and a real upstream (distribution): the page lists the images skopeo
// pulled, the search box narrows them, a download in progress moves on its own, a purge (after
// its confirmation) removes an image and the next pull fetches it from upstream again, and on a
// phone-sized screen nothing scrolls sideways. On failure, screenshots go to test/artifacts/.
import t, { type Test } from "tap";
import { existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { createConnection, createServer, type Socket } from "node:net";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { buildTestImages, DEFAULT_IMAGE_CACHE_DIR, type TestImage } from "../harness/images.ts";
import { makeTempDir, PROJECT_ROOT, using } from "../harness/processes.ts";
import { startRecordingProxy } from "../harness/recording-proxy.ts";
import { pushTestImages, skopeo, startRegistry } from "../harness/registry.ts";
import { startStowage } from "../harness/stowage.ts";

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = join(PROJECT_ROOT, "test", "artifacts");

type Stowage = Awaited<ReturnType<typeof startStowage>>;

const hostOf = (url: string) => new URL(url).host;

/** skopeo copy --all through Stowage into a fresh dir; throws with skopeo's stderr. */
async function pull(stowage: Stowage, ref: string, scratch: string): Promise<void> {
  const out = join(scratch, `pull-${Math.random().toString(36).slice(2, 8)}`);
  const r = await skopeo(["--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false", `docker://${hostOf(stowage.url)}/${ref}`, `dir:${out}`]);
  if (r.code !== 0) throw new Error(`skopeo copy ${ref} failed (${r.code}): ${r.stderr}`);
}

/**
 * A TCP pass-through that sends the upstream's bytes on at about `bytesPerSecond`, so a large
 * blob stays "in progress" long enough for the page to show it moving.
 */
async function startThrottle(target: URL, bytesPerSecond: number): Promise<{ url: string; stop(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = createConnection({ host: target.hostname, port: Number(target.port) });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.on("data", (chunk: Buffer) => {
      client.write(chunk);
      upstream.pause();
      setTimeout(() => upstream.resume(), (chunk.length / bytesPerSecond) * 1000);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Screenshots of every open page into test/artifacts/, named in the test output. */
async function screenshots(tt: Test, pages: Array<[string, Page]>): Promise<void> {
  await mkdir(ARTIFACTS, { recursive: true });
  for (const [name, page] of pages) {
    const path = join(ARTIFACTS, `admin-page-${name}-${Date.now()}.png`);
    try {
      await page.screenshot({ path, fullPage: true });
      tt.comment(`screenshot of the ${name} page: ${path}`);
    } catch (err) {
      tt.comment(`no screenshot of the ${name} page: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}

const chromiumMissing = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium, or run test/setup.sh) to run the browser tests`;

t.test("the admin page in chromium: listing, search, live downloads, purge and re-pull, phone screen", { skip: chromiumMissing }, async (tt) => {
  const { chromium } = await import("playwright-core");
  const scratch = await makeTempDir("admin-page");
  const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  const small = images.filter((i) => ["oci-single", "oci-index", "docker-single", "docker-list"].some((n) => i.repo.endsWith(`/${n}`)));
  const big = images.find((i) => i.repo.endsWith("/big-layer"))!;
  const registry = await using(tt, startRegistry());
  await pushTestImages(registry.url, [...small, big]);
  const upstream = await using(tt, startRecordingProxy(registry.url));
  // 48 MiB/s: the 256 MiB layer takes about five seconds, a few of the page's polls.
  const slow = await using(tt, startThrottle(new URL(registry.url), 48 * 1024 * 1024));
  // Default --gc-grace (10m): a purge still removes what was stored a moment ago.
  const stowage = await using(tt, startStowage(["--upstream", `local=${upstream.url}`, "--upstream", `slow=${slow.url}`, "--default-upstream", "local", "--log-level", "warn"]));

  for (const img of small) await pull(stowage, `local/${img.repo}:${img.tag}`, scratch);

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  tt.teardown(() => browser.close());
  const desktop = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const cspViolations: string[] = [];
  desktop.on("console", (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
  });
  const open: Array<[string, Page]> = [["desktop", desktop]];
  try {
    const response = await desktop.goto(`${stowage.url}/-/`);
    tt.equal(response?.status(), 200, "GET /-/ from loopback");
    tt.equal(response?.headers()["x-frame-options"], "DENY");
    const refs = await desktop.locator("tr.tag").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-ref")));
    tt.same(refs.sort(), small.map((i) => `local/${i.repo}:${i.tag}`).sort(), "the page lists every image pulled, by upstream, repository and tag");
    tt.match(await desktop.locator('tr[data-upstream="local"]').innerText(), /answering/, "the upstream is shown answering");
    const index = small.find((i) => i.repo.endsWith("/oci-index"))!;
    const indexSize = index.blobs.reduce((n, b) => n + b.size, 0);
    tt.match(await desktop.locator(`tr.tag[data-ref="local/${index.repo}:v1"]`).innerText(), /2 platforms/, "an index's size counts its cached platforms");
    tt.ok(indexSize > 0);

    // The search box narrows the listing, on the server.
    await desktop.fill('input[name="q"]', "docker-");
    await Promise.all([desktop.waitForURL(/\?q=docker-/), desktop.press('input[name="q"]', "Enter")]);
    const narrowed = await desktop.locator("tr.tag").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-ref")));
    tt.same(narrowed.sort(), ["local/stowage-test/docker-list:v1", "local/stowage-test/docker-single:v1"], "the search keeps only the matching images");
    tt.match(await desktop.locator("#pager").first().innerText(), /of 2 matching “docker-” \(4 in all\)/);

    // A download in progress shows up, and moves without a reload (the page polls /-/downloads.json).
    await desktop.goto(`${stowage.url}/-/`);
    const bigPull = pull(stowage, `slow/${big.repo}:${big.tag}`, scratch);
    const row = desktop.locator("#downloads-body tr").filter({ hasText: "slow/stowage-test/big-layer" });
    await row.first().waitFor({ timeout: 20_000 });
    const progressOf = () => row.first().locator("progress").evaluate((p) => (p as HTMLProgressElement).value);
    const before = await progressOf();
    // Polled until it moves (the page polls every second), not a fixed wait; 10 s at most.
    let after = before;
    for (let waited = 0; after <= before && waited < 10_000; waited += 100) {
      await desktop.waitForTimeout(100);
      after = await progressOf();
    }
    tt.ok(after > before, `the download's progress moved on its own (${before} -> ${after} bytes)`);
    tt.equal(await desktop.locator("#downloads-status").innerText(), "live", "the script runs under the page's CSP");
    await bigPull;
    let rows = await desktop.locator("#downloads-body tr").count();
    for (let waited = 0; rows > 0 && waited < 10_000; waited += 100) {
      await desktop.waitForTimeout(100);
      rows = await desktop.locator("#downloads-body tr").count();
    }
    tt.equal(rows, 0, "finished downloads leave the list");

    // Purge one image through its button and the confirmation page.
    const victim = small.find((i) => i.repo.endsWith("/oci-single"))!;
    await desktop.goto(`${stowage.url}/-/`);
    await desktop.locator(`tr.tag[data-ref="local/${victim.repo}:v1"] button`).click();
    await desktop.waitForSelector("#confirm-purge");
    tt.match(await desktop.locator("main").innerText(), /Purge tag local\/stowage-test\/oci-single:v1\?/, "a confirmation first");
    tt.equal(await desktop.locator(`tr.tag`).count(), 0, "the confirmation page is not the listing");
    await desktop.locator("#confirm-purge button").click();
    await desktop.waitForSelector("#purge-result");
    const result = await desktop.locator("main").innerText();
    tt.match(result, /Purged tag local\/stowage-test\/oci-single:v1/, "the result says what was purged");
    for (const b of victim.blobs) tt.match(result, new RegExp(b.digest.slice(0, 20)), `it removed blob ${b.digest.slice(7, 19)}`);
    await desktop.goto(`${stowage.url}/-/`);
    const left = await desktop.locator("tr.tag").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-ref")));
    tt.notOk(left.includes(`local/${victim.repo}:v1`), "the purged image is gone from the listing");
    tt.ok(left.includes(`local/stowage-test/oci-index:v1`), "the others stay");

    // The next pull fetches it from upstream again.
    upstream.reset();
    await pull(stowage, `local/${victim.repo}:v1`, scratch);
    const fetched = upstream.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/")).map((r) => r.path.slice(r.path.lastIndexOf("/") + 1));
    tt.same(fetched.sort(), victim.blobs.map((b) => b.digest).sort(), "the pull after the purge fetched every blob of the image from upstream");
    tt.ok(upstream.requests.some((r) => r.path === `/v2/${victim.repo}/manifests/v1`), "and asked upstream for the tag again");
    const headers = (await fetch(`${stowage.url}/v2/local/${victim.repo}/manifests/v1`, { method: "HEAD", headers: { accept: victim.mediaType } })).headers;
    tt.equal(headers.get("x-stowage-cache"), "cache", "after which it is cached again");
    tt.same(cspViolations, [], "no CSP violation in the browser console");

    // A phone: 390x844, nothing wider than the screen.
    const phoneContext = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 3, isMobile: true, hasTouch: true });
    const phone = await phoneContext.newPage();
    open.push(["phone", phone]);
    await phone.goto(`${stowage.url}/-/`);
    const widths = await phone.evaluate(() => ({ scroll: document.documentElement.scrollWidth, body: document.body.scrollWidth, view: window.innerWidth }));
    tt.ok(widths.scroll <= widths.view && widths.body <= widths.view, `no horizontal scroll on a phone (page ${widths.scroll}px, body ${widths.body}px, screen ${widths.view}px)`);
    tt.ok(await phone.locator(`tr.tag[data-ref="local/stowage-test/oci-index:v1"] button`).isVisible(), "the purge buttons are there on a phone");
  } catch (err) {
    tt.fail(err instanceof Error ? err.message : String(err));
  } finally {
    // STOWAGE_E2E_SCREENSHOTS=1 keeps them on success too, to look at the page.
    if (!tt.passing() || process.env.STOWAGE_E2E_SCREENSHOTS) await screenshots(tt, open);
  }
});

t.test("with access control on: the browser signs in with Basic, only admins get the page, and an admin's purge works", { skip: chromiumMissing }, async (tt) => {
  const { chromium } = await import("playwright-core");
  const bcrypt = (await import("bcryptjs")).default;
  const scratch = await makeTempDir("admin-page-auth");
  const images = await buildTestImages(DEFAULT_IMAGE_CACHE_DIR);
  const img = images.find((i) => i.repo.endsWith("/docker-single"))!;
  const registry = await using(tt, startRegistry());
  await pushTestImages(registry.url, [img]);
  const config = join(scratch, "stowage.yaml");
  await writeFile(
    config,
    [
      "users:",
      `  - { name: alice, passwordHash: "${bcrypt.hashSync("alice-pw", 4)}" }`,
      `  - { name: bob, passwordHash: "${bcrypt.hashSync("bob-pw", 4)}" }`,
      "admins: [alice]",
      "accessControl: true",
      "",
    ].join("\n"),
  );
  const stowage = await using(tt, startStowage(["--config", config, "--upstream", `local=${registry.url}`, "--log-level", "info"]));
  const copied = await skopeo(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--src-creds", "bob:bob-pw", `docker://${hostOf(stowage.url)}/local/${img.repo}:v1`, `dir:${join(scratch, "pulled")}`]);
  tt.equal(copied.code, 0, "bob (a user, not an admin) pulls through Stowage", { stderr: copied.stderr });

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  tt.teardown(() => browser.close());
  const open: Array<[string, Page]> = [];
  try {
    // (A headless browser given no credentials abandons the navigation at the challenge, so this one is asked directly.)
    const challenge = await fetch(`${stowage.url}/-/`);
    tt.equal(challenge.status, 401, "no credentials: 401");
    tt.match(challenge.headers.get("www-authenticate"), /^Basic realm="Stowage admin"/, "with a Basic challenge, so a browser asks for a name and password");
    tt.match(await challenge.text(), /sign in as one of the admins/, "and a page saying why, for whoever cancels the prompt");

    const bob = await (await browser.newContext({ httpCredentials: { username: "bob", password: "bob-pw" } })).newPage();
    open.push(["bob", bob]);
    const refused = await bob.goto(`${stowage.url}/-/`);
    tt.equal(refused?.status(), 403, "a user who may pull but is not an admin: 403");
    tt.match(await bob.locator("#error").innerText(), /bob is not an admin/);

    const alice = await (await browser.newContext({ httpCredentials: { username: "alice", password: "alice-pw" } })).newPage();
    open.push(["alice", alice]);
    const ok = await alice.goto(`${stowage.url}/-/`);
    tt.equal(ok?.status(), 200, "an admin gets the page");
    tt.match(await alice.locator("header").innerText(), /signed in as alice/);
    await alice.locator(`tr.tag[data-ref="local/${img.repo}:v1"] button`).click();
    await alice.waitForSelector("#confirm-purge");
    await alice.locator("#confirm-purge button").click();
    await alice.waitForSelector("#purge-result");
    tt.match(await alice.locator("#purge-result").innerText(), /Purged tag local\/stowage-test\/docker-single:v1.*done by alice/s, "the purge ran as alice");
    await alice.goto(`${stowage.url}/-/`);
    tt.equal(await alice.locator("tr.tag").count(), 0, "and the image is gone");
    tt.match(stowage.logs(), /"msg":"admin purge done"[^\n]*"by":"alice"/, "the log says who purged what");
  } catch (err) {
    tt.fail(err instanceof Error ? err.message : String(err));
  } finally {
    if (!tt.passing() || process.env.STOWAGE_E2E_SCREENSHOTS) await screenshots(tt, open);
  }
});
