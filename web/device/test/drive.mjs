#!/usr/bin/env node
// A headless Chromium driven line by line over stdin/stdout, so that a test in any language (a Rust
// test, test/smoke.sh) can run the device page in a real browser. Each command is one line on stdin;
// each answer is one JSON line on stdout: {"ok":true,"value":...} or {"ok":false,"error":"..."}.
// Logs (the page's console, page errors) go to stderr, prefixed "page:".
//
//   open <url>                      load the page (waits for its load event)       value: null
//   wait-seqs <n> <timeout_ms>      until at least n notifications are shown        value: [{seq,id,type,collapse_key,payload,published_at_ms}]
//                                   (on timeout: ok false, with "value" the list so far)
//   wait-status <status> <timeout_ms>  until window.renoDevice.status is <status>    value: the status
//   status                          window.renoDevice.status                        value: "online" | ...
//   state                           window.renoDevice without its device object     value: {status, notifications, resyncs, position, errors, statusLog}
//   offline | online                context.setOffline(true | false)                value: null
//   eval <js>                       evaluates <js> (an expression) in the page      value: its result as JSON (BigInt as text)
//   screenshot <path>               saves a PNG of the page                         value: the path
//   quit                            closes the browser and exits 0                  value: null
//
// Flags: --chromium PATH (default $CHROMIUM or /usr/bin/chromium); --trust-cert PEM_FILE (trust the
// development certificates in it: their SPKI sha256 go to --ignore-certificate-errors-spki-list;
// give the edge's own certificate, or the dev CA when the edge sends the CA in its chain);
// --trust-spki BASE64 (the same, given the hash); --ignore-https-errors (trust any certificate).

import { X509Certificate, createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { chromium } from 'playwright-core';

function parseFlags(argv) {
  const flags = { chromium: process.env.CHROMIUM || '/usr/bin/chromium', spki: [], ignoreHttpsErrors: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    if (flag === '--chromium') flags.chromium = value();
    else if (flag === '--trust-spki') flags.spki.push(value());
    else if (flag === '--trust-cert') flags.spki.push(...spkiHashes(readFileSync(value(), 'utf8')));
    else if (flag === '--ignore-https-errors') flags.ignoreHttpsErrors = true;
    else throw new Error(`unknown flag ${flag}`);
  }
  return flags;
}

// For each certificate in a PEM file: base64 of the sha256 of its SubjectPublicKeyInfo, as
// Chromium's --ignore-certificate-errors-spki-list wants it. Chromium matches these against the
// chain the server sends: a CA's hash helps only if the server sends the CA with its certificate.
function spkiHashes(pem) {
  const certificates = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  if (certificates.length === 0) throw new Error('--trust-cert: no certificate in the file');
  return certificates.map((certificate) => {
    const spki = new X509Certificate(certificate).publicKey.export({ type: 'spki', format: 'der' });
    return createHash('sha256').update(spki).digest('base64');
  });
}

const answer = (object) => process.stdout.write(`${JSON.stringify(object, (_, v) => (typeof v === 'bigint' ? v.toString() : v))}\n`);

// The page's state as plain JSON (BigInts as text), read in the page.
const readState = () =>
  page.evaluate(() => {
    const { device, connect, disconnect, ...rest } = window.renoDevice ?? {};
    return JSON.parse(JSON.stringify(rest, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
  });

async function until(check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [done, value] = await check();
    if (done) return { ok: true, value };
    if (Date.now() >= deadline) return { ok: false, error: 'timeout', value };
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const flags = parseFlags(process.argv.slice(2));
const userDataDir = mkdtempSync(join(tmpdir(), 'reno-drive-'));
const args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--no-first-run'];
if (flags.spki.length > 0) args.push(`--ignore-certificate-errors-spki-list=${flags.spki.join(',')}`);
// A persistent context on a fresh profile directory: nothing from an earlier run (localStorage,
// certificates, caches) leaks in.
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: flags.chromium,
  headless: true,
  args,
  ignoreHTTPSErrors: flags.ignoreHttpsErrors,
});
const page = context.pages()[0] ?? (await context.newPage());
page.on('console', (message) => process.stderr.write(`page: ${message.type()}: ${message.text()}\n`));
page.on('pageerror', (error) => process.stderr.write(`page: error: ${error.message}\n`));

async function quit(code) {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}

const commands = {
  async open(url) {
    await page.goto(url, { waitUntil: 'load' });
    return { ok: true, value: null };
  },
  async 'wait-seqs'(rest) {
    const [n, timeoutMs] = rest.split(/\s+/).map(Number);
    return until(async () => {
      const list = (await readState()).notifications ?? [];
      return [list.length >= n, list];
    }, timeoutMs);
  },
  async 'wait-status'(rest) {
    const [status, timeoutMs] = rest.split(/\s+/);
    return until(async () => {
      const now = (await readState()).status;
      return [now === status, now];
    }, Number(timeoutMs));
  },
  async status() {
    return { ok: true, value: (await readState()).status ?? null };
  },
  async state() {
    return { ok: true, value: await readState() };
  },
  async offline() {
    await context.setOffline(true);
    return { ok: true, value: null };
  },
  async online() {
    await context.setOffline(false);
    return { ok: true, value: null };
  },
  async eval(js) {
    const value = await page.evaluate(async (source) => {
      const result = await (0, eval)(source);
      return JSON.parse(JSON.stringify(result ?? null, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
    }, js);
    return { ok: true, value };
  },
  async screenshot(path) {
    await page.screenshot({ path, fullPage: true });
    return { ok: true, value: path };
  },
};

// One command at a time, in order.
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  const text = line.trim();
  if (!text) continue;
  const space = text.indexOf(' ');
  const [name, rest] = space < 0 ? [text, ''] : [text.slice(0, space), text.slice(space + 1).trim()];
  if (name === 'quit') {
    answer({ ok: true, value: null });
    await quit(0);
  }
  const command = commands[name];
  if (!command) {
    answer({ ok: false, error: `unknown command ${name}` });
    continue;
  }
  try {
    answer(await command(rest));
  } catch (error) {
    answer({ ok: false, error: String(error?.message ?? error) });
  }
}
await quit(0);
