// reno-device.js: the reno device loop for browsers (docs/protocol.md, "The device loop"), on the
// official NATS client over websocket and CBOR. It does what the Rust SDK (crates/reno-device) does:
// subscribe first to the pushes, pull from the position until `more` is false, merge pushes and
// pages (src/merge.js, a port of merge.rs), and pull again after every reconnect, after a
// slow-consumer signal, on page lifecycle events (visible again, online, restored from the
// back/forward cache), when 10,000 pushes are remembered, and every 10 minutes.
//
//   import { connectDevice } from './reno-device.js';
//   const device = connectDevice({
//     servers: 'ws://127.0.0.1:9222',       // or an array; wss:// uses the browser's TLS and trust store
//     member: 'm1', deviceType: 'browser',  // tokens: 1-64 of [A-Za-z0-9_-], checked before any subject
//     position: localStorage.getItem(KEY),  // 'CURSOR[:EPOCH[:TIME]]', {cursor, epoch, cursorTimeMs}, or null
//     token, inboxPrefix,                   // optional, passed to NATS as is (auth token, inbox prefix;
//                                           // with a deviceId, default _INBOX.<member>.<type>.<deviceId>)
//     deviceId, presenceIntervalMs,         // optional: presence heartbeats, only when deviceId is given
//     onEvent(event) {},                    // {kind:'notification', notification, position} | {kind:'resync', position}
//     onPosition(position) {},              // the position to persist changed (save formatPosition(position))
//     onStatus(status, info) {},            // 'connecting' | 'catching-up' | 'online' | 'offline' | 'closed'
//   });
//   device.catchUp();        // pull now (the library already does at the lifecycle points above)
//   device.position;         // {cursor, epoch (BigInt or null), cursorTimeMs}: what to persist
//   await device.close();    // presence offline, then drain and close
//
// Other options: pageLimit (100), pullTimeoutMs (10000), retryMs (1000, between failed pulls and
// connects), routineCatchUpMs (600000), lifecycle (true: listen to window/document events),
// name, natsOptions (merged into the wsconnect options last, for anything else the edge needs; a
// wsFactory given there is called through the library's own, which keeps the socket to drop it).
// onStatus's info is {error?, server?}. Errors that the loop survives (a refused or failed pull, an
// unreadable push) go to onError(error) (default console.warn) and are retried.
//
// The position is the one the app may persist: every notification up to its cursor has been handed
// out by onEvent. Notifications come at least once across restarts: apply them idempotently (by seq).

import { wsconnect } from '@nats-io/nats-core';
import { decode, encode } from 'cborg';

import { Merge, isToken, samePosition, toPosition } from './merge.js';

export { MAX_SEEN, formatPosition, isToken, parsePosition, toPosition } from './merge.js';

/** Starts a device (see the header) and returns it at once; it connects and retries on its own. */
export function connectDevice(options) {
  const device = new RenoDevice(options);
  device.start();
  return device;
}

/** A pull the service refused, with its `Nats-Service-Error-Code` (400, 503, 504). */
export class PullRefused extends Error {
  constructor(code, message) {
    super(`the pull service refused the request (${code}): ${message}`);
    this.code = code;
  }
}

export class RenoDevice {
  #options;
  #merge;
  #reported; // the position last given to onPosition
  #nc = null;
  #socket = null; // the current WebSocket, so that a stalled one can be dropped (#dropSocket)
  #connected = false;
  #closed = false;
  #owed = true; // a catch-up pull is owed (kept until one succeeds)
  #pushes = []; // decoded pushes not yet merged
  #wake = null;
  #routineTimer = null;
  #presenceTimer = null;
  #status = null;
  #everConnected = false;
  #listeners = [];

  constructor(options) {
    const { member, deviceType, deviceId } = options;
    for (const [name, value] of [['member', member], ['deviceType', deviceType]]) {
      if (!isToken(value)) throw new Error(`${name} ${JSON.stringify(value)} is not accepted: use 1 to 64 ASCII letters, digits, '-' or '_'`);
    }
    if (deviceId !== undefined && deviceId !== null && !isToken(deviceId)) {
      throw new Error(`deviceId ${JSON.stringify(deviceId)} is not accepted: use 1 to 64 ASCII letters, digits, '-' or '_'`);
    }
    const servers = Array.isArray(options.servers) ? options.servers : [options.servers];
    if (servers.length === 0 || servers.some((url) => typeof url !== 'string' || !url)) throw new Error('servers: give at least one ws:// or wss:// URL');
    this.#options = {
      pageLimit: 100,
      pullTimeoutMs: 10_000,
      retryMs: 1_000,
      routineCatchUpMs: 600_000,
      presenceIntervalMs: 20_000,
      lifecycle: true,
      onEvent() {},
      onPosition() {},
      onStatus() {},
      onError(error) {
        console.warn('reno:', error);
      },
      // Options given as undefined keep their defaults.
      ...Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)),
      servers,
    };
    this.#merge = new Merge(member, deviceType, toPosition(options.position));
    this.#reported = this.#merge.handed;
    this.pushSubject = `reno.ntf.${member}.${deviceType}`;
    this.pullSubject = `reno.pull.${member}.${deviceType}`;
    this.presenceSubject = deviceId ? `reno.presence.${member}.${deviceType}.${deviceId}` : null;
  }

  /** The position to persist: `{cursor, epoch, cursorTimeMs}` (`formatPosition` makes it a string). */
  get position() {
    return this.#merge.handed;
  }

  /** 'connecting' | 'catching-up' | 'online' | 'offline' | 'closed'. */
  get status() {
    return this.#status;
  }

  /** The NATS connection while there is one (for tests and diagnostics). */
  get connection() {
    return this.#nc;
  }

  start() {
    if (this.#status !== null) return this;
    this.#setStatus('connecting');
    if (this.#options.lifecycle) this.#listenToLifecycle();
    this.#connectLoop();
    this.#pump();
    return this;
  }

  /** Owes a catch-up pull and runs it as soon as connected (app lifecycle points). */
  catchUp() {
    this.#owed = true;
    this.#signal();
  }

  /** Says offline (presence), then drains and closes the connection (at most ~3 s). */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    for (const [target, type, listener] of this.#listeners) target.removeEventListener(type, listener);
    clearTimeout(this.#routineTimer);
    clearInterval(this.#presenceTimer);
    const nc = this.#nc;
    if (nc && !nc.isClosed()) {
      // drain sends what is pending (the presence) before closing; a stalled socket is dropped.
      const graceful = this.#connected ? (this.#presence('offline'), nc.drain()) : nc.close();
      const done = await Promise.race([graceful.then(() => true, () => false), sleep(2_000).then(() => false)]);
      if (!done) {
        this.#dropSocket('closing');
        await Promise.race([nc.close().catch(() => {}), sleep(1_000)]);
      }
    }
    this.#signal();
    this.#setStatus('closed');
  }

  // Connects, subscribes (before any pull), and keeps a connection: nats.js reconnects on its own;
  // when it gives up (its connection closes), a new one is made here.
  async #connectLoop() {
    const o = this.#options;
    let failures = 0; // consecutive failed connects: the wait doubles up to 30 s (a wrong token), with jitter
    while (!this.#closed) {
      let nc;
      try {
        nc = await wsconnect({
          servers: o.servers,
          name: o.name ?? `reno-device-${o.deviceType}`,
          token: o.token,
          // The edges let a device take replies only under its own prefix (docs/protocol.md).
          inboxPrefix: o.inboxPrefix ?? (o.deviceId ? `_INBOX.${o.member}.${o.deviceType}.${o.deviceId}` : undefined),
          reconnect: true,
          maxReconnectAttempts: -1,
          reconnectTimeWait: o.retryMs,
          pingInterval: 20_000,
          maxPingOut: 2,
          ...o.natsOptions,
          wsFactory: (url, options) => this.#openSocket(url, options),
        });
      } catch (error) {
        this.#report(error);
        this.#setStatus(this.#everConnected ? 'offline' : 'connecting', { error });
        // With jitter (0.5 to 1.5 times the wait), so that devices refused together in a reconnect
        // storm do not come back together.
        await sleep(Math.min(o.retryMs * 2 ** failures, 30_000) * (0.5 + Math.random()));
        failures += 1;
        continue;
      }
      failures = 0;
      if (this.#closed) {
        await nc.close();
        return;
      }
      this.#nc = nc;
      this.#watchStatus(nc);
      // 1. Subscribe first: the SUB goes out before any pull request on the same connection.
      nc.subscribe(this.pushSubject, { callback: (error, message) => this.#onPush(error, message) });
      this.#everConnected = true;
      this.#connected = true;
      this.#presence('online');
      this.#startPresence();
      this.catchUp();
      const error = await nc.closed();
      this.#connected = false;
      clearInterval(this.#presenceTimer);
      if (this.#closed) return;
      if (error) this.#report(error);
      this.#owed = true;
      this.#setStatus('offline', { error });
      await sleep(o.retryMs);
    }
  }

  async #watchStatus(nc) {
    for await (const status of nc.status()) {
      if (this.#closed || nc !== this.#nc) return;
      switch (status.type) {
        case 'disconnect':
          this.#connected = false;
          this.#owed = true;
          this.#setStatus('offline', { server: status.server });
          break;
        case 'reconnecting':
          this.#setStatus('offline');
          break;
        case 'reconnect':
          // Pushes may have been missed while away: pull before going on.
          this.#connected = true;
          this.#presence('online');
          this.catchUp();
          break;
        case 'slowConsumer':
          this.catchUp();
          break;
        case 'staleConnection':
          // nats.js closes a socket that missed its pings only once its send buffer is empty,
          // which a stalled socket never gets to: drop it.
          this.#dropSocket('the server stopped answering pings');
          break;
        case 'error':
          this.#report(status.error);
          break;
        default:
          break;
      }
    }
  }

  #onPush(error, message) {
    if (error) {
      this.#report(error);
      this.catchUp();
      return;
    }
    try {
      this.#pushes.push(checkNotification(decode(message.data)));
    } catch (cause) {
      this.#report(new Error(`unreadable push dropped: ${cause.message}`));
      return;
    }
    this.#signal();
  }

  // The one loop that changes the merge state: catch-ups and pushes, one at a time.
  async #pump() {
    while (!this.#closed) {
      if (this.#owed && this.#connected) {
        this.#setStatus('catching-up');
        try {
          await this.#catchUpNow();
          this.#setStatus('online');
        } catch (error) {
          this.#report(error);
          this.#setStatus(this.#connected ? 'catching-up' : 'offline', { error });
          await sleep(this.#options.retryMs);
        }
        continue;
      }
      if (this.#pushes.length > 0) {
        while (this.#pushes.length > 0 && !this.#closed) {
          if (this.#merge.onPush(this.#pushes.shift())) this.#owed = true;
          this.#drain();
        }
        continue;
      }
      await new Promise((resolve) => {
        this.#wake = resolve;
      });
    }
  }

  // 2. Pull every page after the pulled cursor until `more` is false.
  async #catchUpNow() {
    this.#owed = false;
    try {
      for (;;) {
        const page = await this.#pullPage();
        if (this.#closed) return;
        this.#merge.onPage(page);
        this.#drain();
        if (!page.more) break;
      }
    } catch (error) {
      this.#owed = true;
      throw error;
    }
    clearTimeout(this.#routineTimer);
    this.#routineTimer = setTimeout(() => this.catchUp(), this.#options.routineCatchUpMs);
  }

  async #pullPage() {
    const pulled = this.#merge.pulled;
    const request = { cursor: pulled.cursor, limit: this.#options.pageLimit };
    if (pulled.epoch !== null) request.epoch = pulled.epoch; // a BigInt: encoded as a CBOR uint64
    if (pulled.cursorTimeMs !== null) request.cursor_time_ms = pulled.cursorTimeMs;
    const reply = await this.#nc.request(this.pullSubject, encode(request), { timeout: this.#options.pullTimeoutMs });
    const refusal = reply.headers?.get('Nats-Service-Error');
    if (refusal) throw new PullRefused(reply.headers.get('Nats-Service-Error-Code') || '?', refusal);
    return checkPage(decode(reply.data));
  }

  // Hands out what the merge has ready, then reports the position if it moved.
  #drain() {
    for (let event = this.#merge.pop(); event !== null; event = this.#merge.pop()) {
      this.#call('onEvent', { ...event, position: this.#merge.handed });
    }
    if (!samePosition(this.#reported, this.#merge.handed)) {
      this.#reported = this.#merge.handed;
      this.#call('onPosition', this.#reported);
    }
  }

  #presence(status) {
    if (!this.presenceSubject || !this.#nc || this.#nc.isClosed()) return;
    try {
      this.#nc.publish(this.presenceSubject, encode({ status }));
    } catch (error) {
      this.#report(error);
    }
  }

  #startPresence() {
    clearInterval(this.#presenceTimer);
    if (!this.presenceSubject) return;
    this.#presenceTimer = setInterval(() => {
      if (this.#connected) this.#presence('online');
    }, this.#options.presenceIntervalMs);
  }

  // Lifecycle points: a page shown again, the network back, a page restored from the bfcache. A page
  // shown again or the network changing also gets the connection checked: a socket that died
  // silently (sleep, network change) is replaced at once instead of after the missed pings.
  #listenToLifecycle() {
    const on = (target, type, listener) => {
      if (!target?.addEventListener) return;
      target.addEventListener(type, listener);
      this.#listeners.push([target, type, listener]);
    };
    const doc = globalThis.document;
    on(doc, 'visibilitychange', () => {
      if (doc.visibilityState !== 'visible') return;
      this.#probe();
      this.catchUp();
    });
    on(globalThis, 'online', () => {
      this.#probe();
      this.catchUp();
    });
    on(globalThis, 'offline', () => this.#probe());
    on(globalThis, 'pageshow', (event) => {
      if (event.persisted) this.catchUp();
    });
  }

  // A round trip to the server within 3 seconds, or the socket is dropped (and nats.js reconnects).
  async #probe() {
    const nc = this.#nc;
    const socket = this.#socket;
    if (!nc || !this.#connected) return;
    const alive = await Promise.race([nc.flush().then(() => true, () => false), sleep(3_000).then(() => false)]);
    if (!alive && socket === this.#socket && !this.#closed) this.#dropSocket('no answer from the server within 3 s');
  }

  // Opens the sockets for nats.js (its wsFactory), remembering the current one.
  async #openSocket(url, options) {
    const custom = this.#options.natsOptions?.wsFactory;
    const opened = custom ? await custom(url, options) : { socket: new WebSocket(url), encrypted: url.startsWith('wss://') };
    this.#socket = opened.socket;
    return opened;
  }

  // Drops a stalled socket at once. nats.js's own close waits for the socket's send buffer to drain
  // and then for its close event, neither of which comes while the network is gone (a socket whose
  // peer vanished, Chromium's offline mode): so close it and tell nats.js right away, through the
  // close handler it installed (it removes its handlers then, so the real close event later is
  // ignored). nats.js then reconnects as after any lost connection.
  #dropSocket(reason) {
    const socket = this.#socket;
    if (!socket || socket.readyState === 3 /* CLOSED */) return;
    const onclose = socket.onclose;
    try {
      socket.close();
    } catch {
      // already closing
    }
    if (typeof onclose === 'function') onclose.call(socket, { wasClean: false, code: 1006, reason });
  }

  // Calls an app's callback; what it throws goes to onError and does not stop the device.
  #call(name, ...args) {
    try {
      this.#options[name](...args);
    } catch (error) {
      this.#report(error);
    }
  }

  #report(error) {
    try {
      this.#options.onError(error);
    } catch (cause) {
      console.warn('reno: onError threw', cause, 'for', error);
    }
  }

  #signal() {
    const wake = this.#wake;
    this.#wake = null;
    if (wake) wake();
  }

  #setStatus(status, info = {}) {
    if (status === this.#status && !info.error) return;
    this.#status = status;
    this.#call('onStatus', status, info);
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A CBOR unsigned integer that fits a Number (seqs and milliseconds do).
function uint(value, name) {
  if (typeof value === 'bigint' && value <= BigInt(Number.MAX_SAFE_INTEGER)) value = Number(value);
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name}: not an unsigned integer below 2^53`);
  return value;
}

function text(value, name) {
  if (typeof value !== 'string') throw new Error(`${name}: not text`);
  return value;
}

/** Checks a decoded notification's shape (what reno's own decoder insists on). */
export function checkNotification(n) {
  if (n === null || typeof n !== 'object' || Array.isArray(n)) throw new Error('a notification is not a map');
  n.seq = uint(n.seq, 'seq');
  for (const key of ['id', 'type', 'member', 'device_type']) text(n[key], key);
  n.occurred_at_ms = uint(n.occurred_at_ms, 'occurred_at_ms');
  n.published_at_ms = uint(n.published_at_ms, 'published_at_ms');
  if (n.collapse_key !== undefined) text(n.collapse_key, 'collapse_key');
  if (!('payload' in n)) n.payload = null;
  return n;
}

/** Checks a decoded page's shape; its epoch becomes a BigInt whatever its size. */
export function checkPage(page) {
  if (page === null || typeof page !== 'object' || !Array.isArray(page.notifications)) throw new Error('a pull page without notifications');
  page.notifications.forEach(checkNotification);
  page.next_cursor = uint(page.next_cursor, 'next_cursor');
  if (typeof page.more !== 'boolean' || typeof page.resync !== 'boolean') throw new Error('a pull page without more/resync');
  if (typeof page.epoch === 'number' && Number.isSafeInteger(page.epoch) && page.epoch >= 0) page.epoch = BigInt(page.epoch);
  if (typeof page.epoch !== 'bigint' || page.epoch < 0n) throw new Error('epoch: not an unsigned integer');
  if (page.next_cursor_time_ms !== undefined) page.next_cursor_time_ms = uint(page.next_cursor_time_ms, 'next_cursor_time_ms');
  return page;
}
