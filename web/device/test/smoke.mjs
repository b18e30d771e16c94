#!/usr/bin/env node
// The browser device against a real reno, end to end: starts a nats-server (nats/dev.conf) and
// `reno up` on free ports under a fresh directory, serves dist/ over HTTP, drives headless Chromium
// through test/drive.mjs (its line protocol, as a Rust test would), publishes with `reno publish`
// and checks what the page shows: live pushes, catch-up after going offline (every event exactly
// once, nothing missing), a collapsing type showing only its latest state, and a reload resuming
// from the position the page kept in localStorage.
//
// Run: npm run build && npm run smoke. Environment: RENO_BIN (default: the repo's target/debug/reno,
// else /tmp/reno-bin/reno), NATS_SERVER (default: the repo's .tools/nats-server), CHROMIUM,
// SMOKE_DIR (default: a new temporary directory; kept when a check fails).

import { execFile, spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, extname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const device = join(here, '..');
const repo = join(device, '..', '..');
const renoBin = process.env.RENO_BIN || [join(repo, 'target', 'debug', 'reno'), '/tmp/reno-bin/reno'].find(existsSync);
const natsServer = process.env.NATS_SERVER || join(repo, '.tools', 'nats-server');
const dir = process.env.SMOKE_DIR || mkdtempSync(join(tmpdir(), 'reno-web-smoke-'));
const children = [];
// Whatever happens, the servers and the browser this run started go with it.
process.on('exit', () => children.forEach((child) => child.exitCode === null && child.kill('SIGTERM')));
let passed = 0;
let failed = 0;

function check(condition, what, detail) {
  if (condition) {
    passed++;
    console.log(`ok - ${what}`);
  } else {
    failed++;
    console.log(`not ok - ${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  }
}

async function freePort() {
  const server = createNetServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function start(command, args, env, log) {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = createWriteStream(join(dir, log));
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  children.push(child);
  return child;
}

async function waitFor(what, probe, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await probe().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`${what} did not come up within ${timeoutMs} ms (logs in ${dir})`);
}

// dist/ over HTTP.
function serveDist(port) {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.map': 'application/json' };
  const server = createServer((request, response) => {
    const path = new URL(request.url, 'http://x').pathname;
    const file = join(device, 'dist', path === '/' ? 'index.html' : path.slice(1));
    if (!file.startsWith(join(device, 'dist')) || !existsSync(file)) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    response.end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

// The driver: one command line out, one JSON line back.
function startDriver() {
  const child = spawn(process.execPath, [join(here, 'drive.mjs')], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return async (command) => {
    child.stdin.write(`${command}\n`);
    const { value, done } = await lines.next();
    if (done) throw new Error(`the driver exited during: ${command}`);
    return JSON.parse(value);
  };
}

const run = promisify(execFile);
let natsUrl;
async function publish(type, member, payload) {
  const { stdout } = await run(renoBin, ['publish', '--type', type, '--member', member, '--payload', JSON.stringify(payload)], {
    env: { ...process.env, RENO_NATS_URL: natsUrl },
  });
  return JSON.parse(stdout);
}

function countBy(list, key) {
  const counts = new Map();
  for (const item of list) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return counts;
}

async function main() {
  if (!renoBin || !existsSync(renoBin)) throw new Error('no reno binary: build it (cargo build) or set RENO_BIN');
  if (!existsSync(join(device, 'dist', 'app.js'))) throw new Error('no dist/app.js: run npm run build first');
  const [clientPort, wsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  natsUrl = `nats://127.0.0.1:${clientPort}`;
  mkdirSync(dir, { recursive: true });
  rmSync(join(dir, 'store'), { recursive: true, force: true }); // a fresh history every run
  console.log(`# working in ${dir}: nats ${clientPort}, websocket ${wsPort}, http ${httpPort}`);

  start(natsServer, ['-c', join(repo, 'nats', 'dev.conf'), '-p', String(clientPort), '-sd', join(dir, 'store')], { RENO_WS_PORT: String(wsPort) }, 'nats.log');
  await waitFor('nats-server', async () => readFileSync(join(dir, 'nats.log'), 'utf8').includes('Server is ready'), 10_000);
  start(renoBin, ['up', '--registry', join(repo, 'registry', 'events.toml')], { RENO_NATS_URL: natsUrl, RENO_METRICS_ADDR: 'off' }, 'reno.log');
  await waitFor('reno up', async () => readFileSync(join(dir, 'reno.log'), 'utf8').includes('pull service started'), 30_000);
  const http = await serveDist(httpPort);

  const ask = startDriver();
  const member = 'smoke1';
  const url = `http://127.0.0.1:${httpPort}/?server=ws://127.0.0.1:${wsPort}&member=${member}&device_type=browser&device_id=d1`;
  check((await ask(`open ${url}`)).ok, 'the page opens');
  check((await ask('wait-status online 15000')).ok, 'the device goes online');

  // Live: pushes appear while online.
  for (let n = 1; n <= 3; n++) await publish('my_list_updated', member, { n });
  let shown = await ask('wait-seqs 3 10000');
  check(shown.ok && shown.value.map((x) => x.payload.n).join() === '1,2,3', 'three live events appear in order', shown);

  // Offline: the websocket stalls; the page notices (probe on the offline event) and says so.
  await ask('offline');
  const offline = await ask('wait-status offline 15000');
  check(offline.ok, 'the page shows offline', offline);
  for (let n = 4; n <= 6; n++) await publish('my_list_updated', member, { n });
  for (const plan of ['basic', 'standard', 'premium']) await publish('plan_changed', member, { plan });
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const whileOffline = (await ask('state')).value.notifications.length;
  check(whileOffline === 3, 'nothing arrives while offline', whileOffline);

  // Online again: reconnect, catch up by pull.
  await ask('online');
  check((await ask('wait-status online 20000')).ok, 'the device is online again');
  shown = await ask('wait-seqs 7 15000');
  await new Promise((resolve) => setTimeout(resolve, 2_000)); // anything extra would show by now
  const state = (await ask('state')).value;
  const list = state.notifications;
  const lists = list.filter((x) => x.type === 'my_list_updated').map((x) => x.payload.n);
  check(lists.sort().join() === '1,2,3,4,5,6', 'every my_list_updated event shown exactly once after the catch-up', lists);
  const plans = list.filter((x) => x.type === 'plan_changed').map((x) => x.payload.plan);
  check(plans.join() === 'premium', 'plan_changed shows only its latest state after the catch-up', plans);
  check([...countBy(list, (x) => x.seq).values()].every((c) => c === 1), 'no seq handed out twice', list.map((x) => x.seq));
  check([...countBy(list, (x) => x.id).values()].every((c) => c === 1), 'no id handed out twice');
  const dom = (await ask("eval [...document.querySelectorAll('li.notification')].map((li) => [Number(li.dataset.seq), li.dataset.id])")).value;
  check(dom.length === list.length && new Set(dom.map(([seq]) => seq)).size === dom.length && dom.every(([, id]) => id), 'the list shows each notification once, with data-seq and data-id', dom);
  check(/^\d+:\d{19}:\d{13}$/.test(state.position), 'the position carries cursor, the 19-digit epoch and the cursor time', state.position);
  check(state.resyncs === 0, 'no resync');

  // Live collapse: a newer plan arrives by push and replaces the shown one.
  await publish('plan_changed', member, { plan: 'family' });
  shown = await ask(`wait-seqs ${list.length + 1} 10000`);
  check(shown.ok && shown.value.at(-1).payload.plan === 'family', 'a newer plan_changed arrives live', shown.value?.at(-1));
  const replaced = (await ask("eval document.querySelectorAll('li.notification.replaced').length")).value;
  check(replaced === 1, 'the older plan is marked replaced on the page', replaced);
  await ask(`screenshot ${join(dir, 'page.png')}`);

  // Reload: the page resumes from its saved position. What was pulled is not shown again; what came
  // by push after the last pull comes again (pushes do not move the position: at least once).
  const before = (await ask('state')).value;
  const cursor = Number(before.position.split(':')[0]);
  await ask(`open ${url}`);
  check((await ask('wait-status online 15000')).ok, 'the reloaded page goes online');
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const reloaded = (await ask('state')).value;
  const again = reloaded.notifications.map((x) => x.seq);
  const expected = before.notifications.map((x) => x.seq).filter((seq) => seq > cursor);
  check(again.join() === expected.join(), 'after a reload only what came by push after the saved position comes again', { again, expected, position: before.position });
  check(reloaded.resyncs === 0 && BigInt(reloaded.position.split(':')[1]) === BigInt(before.position.split(':')[1]), 'the epoch survives localStorage exactly (no resync)', [before.position, reloaded.position]);
  await publish('my_list_updated', member, { n: 7 });
  shown = await ask(`wait-seqs ${again.length + 1} 10000`);
  check(shown.ok && shown.value.at(-1).payload.n === 7, 'a new event after the reload appears');

  await ask('quit');
  http.close();
}

try {
  await main();
} catch (error) {
  failed++;
  console.log(`not ok - ${error.message}`);
} finally {
  for (const child of children.reverse()) if (child.exitCode === null) child.kill('SIGTERM');
  await new Promise((resolve) => setTimeout(resolve, 500));
  if (failed === 0 && !process.env.SMOKE_DIR) rmSync(dir, { recursive: true, force: true });
  else console.log(`# logs and page.png in ${dir}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 ? 0 : 1;
}
