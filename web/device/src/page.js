// The page's script (bundled into dist/app.js): reads the settings from the form or the URL query,
// runs a device with reno-device.js, shows the notifications newest first, the status and the
// position, keeps the position in localStorage (key `reno.position.<member>.<device_type>`), and
// exposes its state as `window.renoDevice` for tests:
//   { status, notifications: [{seq, id, type, collapse_key, payload, published_at_ms}] (handed-out
//     order), resyncs, position (text), errors: [text], statusLog: [status], connect(), disconnect() }

import { connectDevice, formatPosition } from './reno-device.js';

const $ = (id) => document.getElementById(id);
const form = $('settings');
const state = {
  status: 'idle',
  statusLog: [],
  notifications: [],
  resyncs: 0,
  position: null,
  errors: [],
  device: null,
  connect,
  disconnect,
};
window.renoDevice = state;

// JSON for showing a payload: BigInts as decimal text, byte strings as hex.
function show(value) {
  return JSON.stringify(
    value,
    (_, v) => (typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? { bytes: [...v].map((b) => b.toString(16).padStart(2, '0')).join('') } : v),
    2,
  );
}

const positionKey = (member, deviceType) => `reno.position.${member}.${deviceType}`;

function setStatus(status, info) {
  state.status = status;
  state.statusLog.push(status);
  const label = { connecting: 'connecting…', 'catching-up': 'catching up…', online: 'online', offline: 'offline', closed: 'closed' };
  $('status').dataset.status = status;
  $('status').textContent = label[status] ?? status;
  $('error').textContent = info?.error ? String(info.error.message ?? info.error) : '';
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addNotification(n) {
  state.notifications.push({ seq: n.seq, id: n.id, type: n.type, collapse_key: n.collapse_key, payload: n.payload, published_at_ms: n.published_at_ms });
  const item = element('li', 'notification');
  Object.assign(item.dataset, { seq: String(n.seq), id: n.id, type: n.type });
  if (n.collapse_key !== undefined) {
    item.dataset.collapseKey = n.collapse_key;
    // An older state of the same collapse key is replaced by this one.
    for (const old of $('notifications').querySelectorAll('li.notification:not(.replaced)')) {
      if (old.dataset.type === n.type && old.dataset.collapseKey === n.collapse_key) {
        old.classList.add('replaced');
        old.querySelector('.note').textContent = 'replaced';
      }
    }
  }
  const head = element('div', 'head');
  head.append(
    element('span', 'type', n.type),
    element('span', 'seq', `seq ${n.seq}`),
    element('span', 'time', new Date(n.published_at_ms).toLocaleString()),
    element('span', 'note', n.collapse_key !== undefined ? `collapse key ${n.collapse_key}` : ''),
  );
  item.append(head, element('pre', 'payload', show(n.payload)));
  $('notifications').prepend(item);
  $('count').textContent = String(state.notifications.length);
}

function addResync() {
  state.resyncs += 1;
  const item = element('li', 'resync', 'resync: notifications after the saved position may be gone; the app reloads its state');
  item.dataset.resync = String(state.resyncs);
  $('notifications').prepend(item);
}

function showPosition(position) {
  state.position = formatPosition(position);
  $('position').textContent = state.position;
}

function settings() {
  const data = new FormData(form);
  const value = (name) => String(data.get(name) ?? '').trim() || undefined;
  return {
    server: value('server') ?? `ws://${location.hostname || '127.0.0.1'}:9222`,
    member: value('member'),
    deviceType: value('device_type'),
    token: value('token'),
    deviceId: value('device_id'),
    inboxPrefix: new URLSearchParams(location.search).get('inbox_prefix') || undefined,
  };
}

function connect() {
  disconnect();
  const { server, member, deviceType, token, deviceId, inboxPrefix } = settings();
  const key = positionKey(member, deviceType);
  try {
    state.device = connectDevice({
      servers: server.split(',').map((s) => s.trim()),
      member,
      deviceType,
      token,
      deviceId,
      inboxPrefix,
      position: localStorage.getItem(key),
      onEvent(event) {
        if (event.kind === 'resync') addResync();
        else addNotification(event.notification);
      },
      onPosition(position) {
        localStorage.setItem(key, formatPosition(position));
        showPosition(position);
      },
      onStatus: setStatus,
      onError(error) {
        state.errors.push(String(error?.message ?? error));
        console.warn('reno:', error);
      },
    });
    showPosition(state.device.position);
  } catch (error) {
    state.errors.push(error.message);
    $('error').textContent = error.message;
  }
}

function disconnect() {
  const device = state.device;
  state.device = null;
  if (device) device.close();
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  connect();
});
$('disconnect').addEventListener('click', disconnect);
$('forget').addEventListener('click', () => {
  const { member, deviceType } = settings();
  localStorage.removeItem(positionKey(member, deviceType));
  $('position').textContent = '-';
});
// Leaving the page closes cleanly (presence offline); coming back from the back/forward cache
// connects again.
let resume = false;
window.addEventListener('pagehide', () => {
  resume = state.device !== null;
  disconnect();
});
window.addEventListener('pageshow', (event) => {
  if (event.persisted && resume) connect();
});

// Settings from the URL query; with server and member given, connect at once.
const query = new URLSearchParams(location.search);
for (const name of ['server', 'member', 'device_type', 'token', 'device_id']) {
  if (query.has(name)) form.elements[name].value = query.get(name);
}
if (query.has('server') && query.has('member')) connect();
