// Merging push and pull into the one stream the app sees, with no IO: a line-by-line port of the
// Rust SDK's crates/reno-device/src/merge.rs (keep the two in step). Also the position helpers
// (the same `CURSOR[:EPOCH[:CURSOR_TIME_MS]]` text as the Rust `Position`).
//
// A position is `{cursor: number, epoch: bigint | null, cursorTimeMs: number | null}`. The epoch is
// nanoseconds since 1970 (about 1.8e18, above 2^53), so it is always a BigInt, never a Number.

/** Seqs remembered above the pulled cursor (or collapse keys) before a catch-up should move on. */
export const MAX_SEEN = 10_000;

const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/** Whether `value` is a reno token: 1 to 64 ASCII letters, digits, `-` or `_`. */
export function isToken(value) {
  return typeof value === 'string' && TOKEN.test(value);
}

/** A new device's position: nothing pulled yet, epoch and cursor time unknown. */
export const START = Object.freeze({ cursor: 0, epoch: null, cursorTimeMs: null });

/** `{cursor, epoch, cursorTimeMs}`, a position string, or null/undefined (a new device) to a position. */
export function toPosition(value) {
  if (value === null || value === undefined || value === '') return START;
  if (typeof value === 'string') return parsePosition(value);
  const cursor = wholeNumber(value.cursor ?? 0, 'cursor');
  const epoch = value.epoch === null || value.epoch === undefined ? null : toBigInt(value.epoch);
  const time = value.cursorTimeMs ?? null;
  return Object.freeze({ cursor, epoch, cursorTimeMs: time === null ? null : wholeNumber(time, 'cursorTimeMs') });
}

/** Parses `CURSOR[:EPOCH[:CURSOR_TIME_MS]]` (empty parts: unknown), as `reno device --from` does. */
export function parsePosition(text) {
  const parts = String(text).split(':');
  const digits = (part) => {
    if (!/^[0-9]+$/.test(part)) {
      throw new Error(`${JSON.stringify(text)} is not a position: use CURSOR[:EPOCH[:CURSOR_TIME_MS]] with whole numbers`);
    }
    return part;
  };
  if (parts.length > 3) digits('');
  const optional = (part) => (part === undefined || part === '' ? null : digits(part));
  const cursor = Number(digits(parts[0]));
  const epoch = optional(parts[1]);
  const time = optional(parts[2]);
  return toPosition({ cursor, epoch: epoch === null ? null : BigInt(epoch), cursorTimeMs: time === null ? null : Number(time) });
}

/** The position as `CURSOR[:EPOCH[:CURSOR_TIME_MS]]`, exactly like the Rust `Position`'s Display. */
export function formatPosition({ cursor, epoch, cursorTimeMs }) {
  const part = (value) => (value === null || value === undefined ? '' : String(value));
  if (epoch === null && cursorTimeMs === null) return String(cursor);
  if (cursorTimeMs === null) return `${cursor}:${part(epoch)}`;
  return `${cursor}:${part(epoch)}:${part(cursorTimeMs)}`;
}

export function samePosition(a, b) {
  return a.cursor === b.cursor && a.epoch === b.epoch && a.cursorTimeMs === b.cursorTimeMs;
}

function wholeNumber(value, name) {
  const number = typeof value === 'bigint' ? Number(value) : value;
  if (!Number.isSafeInteger(number) || number < 0) throw new Error(`${name} must be a whole number, not ${value}`);
  return number;
}

function toBigInt(value) {
  if (typeof value === 'bigint') return value;
  if ((typeof value === 'number' && Number.isSafeInteger(value)) || (typeof value === 'string' && /^[0-9]+$/.test(value))) {
    return BigInt(value);
  }
  throw new Error(`epoch must be a whole number (a BigInt or a decimal string), not ${value}`);
}

/**
 * The merge state of one device. Feed it pages (`onPage`) and pushes (`onPush`), then take the
 * events out with `pop` until it returns null. Events: `{kind: 'notification', notification}` and
 * `{kind: 'resync'}`.
 */
export class Merge {
  constructor(member, deviceType, position) {
    this.member = member;
    this.deviceType = deviceType;
    // Every history entry up to here has been pulled: the next pull starts after it.
    this.pulled = toPosition(position);
    // Every history entry up to here has been handed to the app: the position to persist.
    this.handed = this.pulled;
    // For collapsing notifications, the newest seq handed out per (type, collapse key).
    this.newest = new Map();
    // Seqs above `pulled` already queued or handed (pushes), so that a pull does not repeat them.
    this.seen = new Set();
    // Events ready for the app, in order, each with the position that holds once it is handed out.
    this.ready = [];
  }

  /** Takes one pull page (already decoded and checked), in order. */
  onPage(page) {
    const end = Object.freeze({ cursor: page.next_cursor, epoch: page.epoch, cursorTimeMs: page.next_cursor_time_ms ?? null });
    if (page.resync) {
      // The history restarts below or beyond our cursor: take the page as it comes. Seqs stay unique
      // within an epoch, so what came by push is still known then; a new epoch starts its seqs over.
      this.ready.push([{ kind: 'resync' }, null]);
      if (this.pulled.epoch !== page.epoch) this.seen.clear();
      this.pulled = Object.freeze({ ...end, cursor: 0 });
    }
    for (const notification of page.notifications) {
      // The event's receive time comes before its history write: a safe stand-in.
      const at = Object.freeze({ cursor: notification.seq, epoch: page.epoch, cursorTimeMs: notification.published_at_ms });
      this.#accept(notification, at);
    }
    // The page's end becomes the app's position once everything queued before it is handed out.
    this.pulled = end;
    if (this.ready.length > 0) this.ready[this.ready.length - 1][1] = end;
    else this.handed = end;
    for (const seq of this.seen) if (seq <= end.cursor) this.seen.delete(seq);
  }

  /** Takes one push. Returns whether so many pushes are remembered that a catch-up should run. */
  onPush(notification) {
    this.#accept(notification, null);
    return this.seen.size > MAX_SEEN;
  }

  /** The next event for the app, or null. `this.handed` is the position once it is handed out. */
  pop() {
    while (this.ready.length > 0) {
      const [event, position] = this.ready.shift();
      if (position !== null) this.handed = position;
      if (event.kind === 'notification' && this.#superseded(event.notification)) continue;
      // Collapse state from before a resync says nothing about the history after it.
      if (event.kind === 'resync') this.newest.clear();
      return event;
    }
    return null;
  }

  #accept(notification, position) {
    if (notification.member !== this.member || notification.device_type !== this.deviceType) {
      console.warn(`reno: notification ${notification.seq} for another member or device type dropped`);
      return;
    }
    if (notification.seq <= this.pulled.cursor || this.seen.has(notification.seq)) return;
    this.seen.add(notification.seq);
    this.ready.push([{ kind: 'notification', notification }, position]);
  }

  // Whether a newer notification with the same collapse key was handed out already; if not, this
  // one becomes the newest.
  #superseded(notification) {
    if (notification.collapse_key === undefined || notification.collapse_key === null) return false;
    if (this.newest.size >= MAX_SEEN) this.newest.clear();
    const key = `${notification.type}\n${notification.collapse_key}`;
    const newest = this.newest.get(key) ?? 0;
    if (notification.seq < newest) return true;
    this.newest.set(key, notification.seq);
    return false;
  }
}
