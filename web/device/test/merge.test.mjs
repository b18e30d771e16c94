// Unit tests of src/merge.js: the same cases as the tests in crates/reno-device/src/merge.rs, plus
// the position text and the BigInt epoch through CBOR. Run: npm test (node --test).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decode, encode } from 'cborg';

import { MAX_SEEN, Merge, formatPosition, parsePosition } from '../src/merge.js';
import { checkPage } from '../src/reno-device.js';

const EPOCH = 7n;

const merge = () => new Merge('m', 'tv', null);

const notification = (seq) => ({
  seq,
  id: `e${seq}`,
  type: 'my_list_updated',
  member: 'm',
  device_type: 'tv',
  occurred_at_ms: 1_000 + seq,
  published_at_ms: 2_000 + seq,
  payload: null,
});

const collapsing = (seq) => ({ ...notification(seq), type: 'plan_changed', collapse_key: 'plan' });

const page = (seqs, nextCursor, extra = {}) => ({
  notifications: seqs.map(notification),
  next_cursor: nextCursor,
  more: false,
  resync: false,
  epoch: EPOCH,
  next_cursor_time_ms: 9_000 + nextCursor,
  ...extra,
});

// Hands out everything ready, as seqs (0 for a resync).
function drain(m) {
  const out = [];
  for (let event = m.pop(); event !== null; event = m.pop()) out.push(event.kind === 'resync' ? 0 : event.notification.seq);
  return out;
}

test('what came by push is not repeated by pull and the other way round', () => {
  const m = merge();
  m.onPush(notification(5));
  m.onPush(notification(3));
  assert.deepEqual(drain(m), [5, 3], 'pushes in arrival order');
  m.onPage(page([3, 4, 5], 6));
  assert.deepEqual(drain(m), [4]);
  m.onPush(notification(4));
  m.onPush(notification(6));
  assert.deepEqual(drain(m), [], 'at or below the pulled cursor');
  m.onPush(notification(7));
  m.onPush(notification(7));
  assert.deepEqual(drain(m), [7]);
});

test('the position moves only past what was handed out by pull', () => {
  const m = merge();
  m.onPush(notification(9));
  assert.deepEqual(drain(m), [9]);
  assert.equal(m.handed.cursor, 0, 'a push does not move the position');
  m.onPage(page([2, 4], 6));
  assert.equal(m.handed.cursor, 0, 'queued is not handed out');
  m.pop();
  assert.deepEqual(m.handed, { cursor: 2, epoch: EPOCH, cursorTimeMs: 2_002 });
  m.pop();
  assert.deepEqual(m.handed, { cursor: 6, epoch: EPOCH, cursorTimeMs: 9_006 });
  m.onPage(page([], 8));
  assert.equal(m.handed.cursor, 8, 'an empty page moves it at once');
});

test('a resync within the epoch still knows what came by push', () => {
  const m = merge();
  m.onPage(page([2], 2));
  m.onPush(notification(30));
  assert.deepEqual(drain(m), [2, 30]);
  m.onPage(page([20, 30], 30, { resync: true }));
  assert.deepEqual(drain(m), [0, 20]);
  assert.equal(m.handed.cursor, 30);
});

test('a new epoch starts the seqs over', () => {
  const m = merge();
  m.onPage(page([], 40));
  m.onPush(notification(41));
  assert.deepEqual(drain(m), [41]);
  m.onPage(page([1, 41], 41, { resync: true, epoch: EPOCH + 1n }));
  assert.deepEqual(drain(m), [0, 1, 41], 'seq 41 of the new history is another notification');
  assert.equal(m.handed.epoch, EPOCH + 1n);
});

test('an older state of a collapse key arriving late is dropped', () => {
  const m = merge();
  m.onPush(collapsing(11));
  m.onPush(collapsing(10));
  m.onPush(collapsing(12));
  assert.deepEqual(drain(m), [11, 12]);
});

test("another member's or device type's notification is dropped", () => {
  const m = merge();
  m.onPush({ ...notification(1), member: 'other' });
  m.onPush({ ...notification(2), device_type: 'mobile' });
  assert.deepEqual(drain(m), []);
});

test('too many remembered pushes ask for a catch-up', () => {
  const m = merge();
  const asked = [];
  for (let seq = 1; seq <= MAX_SEEN + 1; seq++) asked.push(m.onPush(notification(seq)));
  assert.equal(asked[MAX_SEEN - 1], false);
  assert.equal(asked[MAX_SEEN], true);
});

test('positions read and print like the Rust Position', () => {
  for (const text of ['0', '6:1795599990000000000:1795600004216', '6:1795599990000000000', '6::1795600004216']) {
    assert.equal(formatPosition(parsePosition(text)), text);
  }
  assert.equal(parsePosition('6:18446744073709551615').epoch, 18446744073709551615n);
  assert.throws(() => parsePosition('6:x'));
  assert.throws(() => parsePosition('1:2:3:4'));
});

test('an epoch above 2^53 goes through CBOR exactly', () => {
  const epoch = 1795599990000000123n;
  const wire = encode({ notifications: [], next_cursor: 3, more: false, resync: false, epoch, next_cursor_time_ms: 1795600004216 });
  const decoded = checkPage(decode(wire));
  assert.equal(decoded.epoch, epoch);
  assert.equal(decoded.next_cursor_time_ms, 1795600004216);
  assert.equal(typeof decoded.next_cursor_time_ms, 'number');
  const request = decode(encode({ cursor: 3, epoch: decoded.epoch }));
  assert.equal(request.epoch, epoch);
  // A small epoch (the Rust tests use 7) decodes as a Number and is still taken as a BigInt.
  assert.equal(checkPage(decode(encode({ notifications: [], next_cursor: 0, more: false, resync: false, epoch: 7 }))).epoch, 7n);
});
