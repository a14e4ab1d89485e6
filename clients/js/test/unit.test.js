// Unit tests against a fake WebSocket: the backoff formula, duplicate
// dropping, the request queue's bounds, request ids and error replies.
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { Ringcast, reconnectDelay } from '../index.js';
import { sleep, waitFor } from '../testlib/helpers.js';

/** A WebSocket the test drives by hand. */
function fakeSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      this.closed = null;
      sockets.push(this);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closed = { code, reason };
      this.readyState = 3;
    }
    // test side
    open(welcome = { type: 'welcome', client: 'c1', core: 0, ping_ms: 15000 }) {
      this.readyState = 1;
      this.onopen && this.onopen({});
      this.receive(welcome);
    }
    receive(obj) {
      this.onmessage && this.onmessage({ data: JSON.stringify(obj) });
    }
    drop(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason });
    }
    last(type) {
      return [...this.sent].reverse().find((m) => m.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

test('reconnectDelay: full jitter, random(0, min(max, min * 2^attempt))', () => {
  const random = mock.method(Math, 'random', () => 0.999999);
  try {
    assert.equal(reconnectDelay(0, 500, 20000), 499);
    assert.equal(reconnectDelay(1, 500, 20000), 999);
    assert.equal(reconnectDelay(3, 500, 20000), 3999);
    assert.equal(reconnectDelay(6, 500, 20000), 19999); // 32000 capped
    assert.equal(reconnectDelay(1000, 500, 20000), 19999); // no overflow
    random.mock.mockImplementation(() => 0);
    assert.equal(reconnectDelay(5, 500, 20000), 0);
    random.mock.mockImplementation(() => 0.5);
    assert.equal(reconnectDelay(2, 500, 20000), 1000);
  } finally {
    random.mock.restore();
  }
});

test('the client waits reconnectDelay(attempt) between attempts and resets after a welcome', async () => {
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const random = mock.method(Math, 'random', () => 0.5);
  try {
    const rc = new Ringcast('ws://fake/ws', { WebSocket: FakeWebSocket, minReconnectDelay: 10, maxReconnectDelay: 35 });
    const delays = [];
    rc.on('state', (s) => s.state === 'disconnected' && delays.push(s.delay));
    rc.connect();
    for (let i = 0; i < 4; i++) {
      await waitFor(() => sockets.length === i + 1, 'attempt');
      sockets[i].drop(1006);
    }
    assert.deepEqual(delays, [5, 10, 17, 17]);
    await waitFor(() => sockets.length === 5, 'attempt');
    sockets[4].open();
    assert.equal(rc.state, 'connected');
    sockets[4].drop(1006);
    assert.equal(delays.at(-1), 5); // reset after the welcome
    rc.close();
  } finally {
    random.mock.restore();
  }
});

test('a subscription drops duplicates and messages before its ack, and resubscribes with since', async () => {
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const rc = new Ringcast('ws://fake/ws', { WebSocket: FakeWebSocket, minReconnectDelay: 1, maxReconnectDelay: 1 });
  const connected = rc.connect();
  sockets[0].open();
  await connected;
  const sub = rc.subscribe('room');
  const got = [];
  sub.on('message', (m) => got.push(m.offset));
  const req = sockets[0].last('subscribe');
  assert.deepEqual(req, { type: 'subscribe', channel: 'room', id: req.id });
  sockets[0].receive({ type: 'message', channel: 'room', offset: 3, payload: 0 }); // before the ack
  sockets[0].receive({ type: 'ack', id: req.id, epoch: 'e1', offset: 4 });
  const info = await sub.ready;
  assert.deepEqual(info, { channel: 'room', recovered: false, wasRecovering: false, offset: 4, epoch: 'e1' });
  for (const o of [5, 6, 6, 5, 7]) sockets[0].receive({ type: 'message', channel: 'room', offset: o, payload: o });
  assert.deepEqual(got, [5, 6, 7]);

  sockets[0].drop(1006);
  await waitFor(() => sockets.length === 2, 'reconnect');
  sockets[1].open();
  const again = sockets[1].last('subscribe');
  assert.deepEqual(again.since, { offset: 7, epoch: 'e1' });
  const subscribed = [];
  sub.on('subscribed', (i) => subscribed.push(i));
  sockets[1].receive({ type: 'ack', id: again.id, epoch: 'e1', offset: 9, recovered: true });
  for (const o of [6, 7, 8, 9, 10]) sockets[1].receive({ type: 'message', channel: 'room', offset: o, payload: o });
  assert.deepEqual(got, [5, 6, 7, 8, 9, 10]);
  assert.equal(subscribed[0].recovered, true);

  // A new epoch: recovered:false, offsets restart.
  sockets[1].drop(1006);
  await waitFor(() => sockets.length === 3, 'reconnect');
  sockets[2].open();
  const third = sockets[2].last('subscribe');
  assert.deepEqual(third.since, { offset: 10, epoch: 'e1' });
  sockets[2].receive({ type: 'ack', id: third.id, epoch: 'e2', offset: 0, recovered: false });
  sockets[2].receive({ type: 'message', channel: 'room', offset: 1, payload: 1 });
  assert.deepEqual(got, [5, 6, 7, 8, 9, 10, 1]);
  assert.deepEqual(subscribed[1], { channel: 'room', recovered: false, wasRecovering: true, offset: 0, epoch: 'e2' });

  // recover:false never sends since.
  const plain = rc.subscribe('plain', { recover: false, presence: true, joinLeave: true });
  const p = sockets[2].last('subscribe');
  assert.deepEqual(p, { type: 'subscribe', channel: 'plain', presence: true, join_leave: true, id: p.id });
  sockets[2].receive({ type: 'ack', id: p.id, epoch: 'e3', offset: 2, presence: { count: 1, clients: [] } });
  assert.deepEqual((await plain.ready).presence, { count: 1, clients: [] });
  sockets[2].drop(1006);
  await waitFor(() => sockets.length === 4, 'reconnect');
  sockets[3].open();
  assert.equal(sockets[3].sent.find((m) => m.channel === 'plain').since, undefined);
  rc.close();
  assert.deepEqual(sockets[3].closed, { code: 1000, reason: 'client closed' });
});

test('requests: ids, replies, error replies, timeouts', async () => {
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const rc = new Ringcast('ws://fake/ws', { WebSocket: FakeWebSocket });
  const connected = rc.connect();
  sockets[0].open();
  await connected;
  const a = rc.publish('c', { x: 1 });
  const b = rc.history('c', { limit: 2 });
  const c = rc.presence('c', { timeout: 30 });
  const [pa, hb] = [sockets[0].sent[0], sockets[0].sent[1]];
  assert.deepEqual(pa, { type: 'publish', channel: 'c', payload: { x: 1 }, id: pa.id });
  assert.deepEqual(hb, { type: 'history', channel: 'c', limit: 2, id: hb.id });
  assert.notEqual(pa.id, hb.id);
  sockets[0].receive({ type: 'error', id: hb.id, code: 'history_disabled', message: 'no history' });
  sockets[0].receive({ type: 'ack', id: pa.id, epoch: 'e', offset: 7 });
  assert.deepEqual(await a, { offset: 7, epoch: 'e' });
  await assert.rejects(b, (e) => e.code === 'history_disabled' && e.message === 'no history');
  await assert.rejects(c, (e) => e instanceof Error && e.code === 'timeout');
  rc.close();
});

test('queue while disconnected: flushed in order on the welcome, bounded by queueLimit and queueMaxAge', async () => {
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const short = new Ringcast('ws://fake/ws', { WebSocket: FakeWebSocket, queueMaxAge: 50 });
  await assert.rejects(short.publish('c', 1), { code: 'queue_expired' });
  assert.equal(sockets.length, 0);
  const rc = new Ringcast('ws://fake/ws', { WebSocket: FakeWebSocket, queueLimit: 2, queueMaxAge: 60000 });
  const queued = [rc.publish('c', 2), rc.publish('c', 3)];
  await assert.rejects(rc.publish('c', 4), { code: 'queue_full' });
  const connected = rc.connect();
  sockets[0].open();
  await connected;
  const sent = sockets[0].sent.filter((m) => m.type === 'publish');
  assert.deepEqual(sent.map((m) => m.payload), [2, 3]);
  sent.forEach((m, i) => sockets[0].receive({ type: 'ack', id: m.id, epoch: 'e', offset: i + 1 }));
  assert.deepEqual(await Promise.all(queued), [{ offset: 1, epoch: 'e' }, { offset: 2, epoch: 'e' }]);

  // In flight when the connection drops: rejected ('disconnected'); queued: 'closed' on close().
  const inflight = rc.publish('c', 5);
  sockets[0].drop(1006);
  await assert.rejects(inflight, { code: 'disconnected' });
  const waiting = rc.publish('c', 6);
  rc.close();
  await assert.rejects(waiting, { code: 'closed' });
  await assert.rejects(rc.publish('c', 7), { code: 'closed' });
});

test('4001 and 4003 stop the client; other codes reconnect', async () => {
  for (const code of [4001, 4003]) {
    const { FakeWebSocket, sockets } = fakeSocketClass();
    const rc = new Ringcast('ws://fake/ws', { WebSocket: FakeWebSocket, minReconnectDelay: 1, maxReconnectDelay: 1 });
    const states = [];
    rc.on('state', (s) => states.push(s));
    const connected = rc.connect();
    sockets[0].open();
    await connected;
    sockets[0].drop(code, 'unauthorized: token expired');
    await sleep(30);
    assert.equal(sockets.length, 1);
    assert.deepEqual(states.at(-1), { state: 'closed', code, reason: 'unauthorized: token expired' });
  }
});

test('heartbeat: an app-level ping when idle half the window, a reconnect after the whole window', async () => {
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const rc = new Ringcast('ws://fake/ws', { WebSocket: FakeWebSocket, pingMargin: 1000, minReconnectDelay: 10000 });
  const connected = rc.connect();
  sockets[0].open({ type: 'welcome', client: 'c', core: 0, ping_ms: 1000 });
  await connected;
  const disconnected = new Promise((r) => rc.once('state', r));
  await waitFor(() => sockets[0].last('ping'), 'an app-level ping');
  assert.deepEqual(sockets[0].last('ping'), { type: 'ping' });
  const down = await disconnected;
  assert.equal(down.state, 'disconnected');
  assert.equal(down.code, 4000);
  assert.match(down.reason, /no traffic/);
  assert.equal(sockets[0].closed.code, 4000); // no terminate(): close(4000)
  rc.close();
});

test('a subscribe without an ack, or a socket without a welcome, is given up and retried', async () => {
  const { FakeWebSocket, sockets } = fakeSocketClass();
  const rc = new Ringcast('ws://fake/ws', {
    WebSocket: FakeWebSocket,
    requestTimeout: 50,
    connectTimeout: 300,
    minReconnectDelay: 1,
    maxReconnectDelay: 1,
  });
  const states = [];
  rc.on('state', (s) => states.push(s));
  rc.connect();
  await waitFor(() => sockets.length === 2, 'a second attempt after no welcome');
  assert.match(states.find((s) => s.state === 'disconnected').reason, /no welcome/);
  sockets[1].open();
  const sub = rc.subscribe('room');
  const err = await new Promise((r) => sub.once('error', r));
  assert.equal(err.code, 'timeout');
  await waitFor(() => sockets.length === 3, 'a reconnect after the subscribe timeout');
  assert.match(states.filter((s) => s.state === 'disconnected')[1].reason, /subscribe timeout/);
  sockets[2].open();
  const req = sockets[2].last('subscribe');
  sockets[2].receive({ type: 'ack', id: req.id, epoch: 'e', offset: 0 });
  assert.equal((await sub.ready).epoch, 'e');
  rc.close();
});
