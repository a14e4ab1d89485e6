// Failures against the real server: a stopped server (request timeout,
// dead-link detection), a killed and restarted server (queue flush,
// recovered:false), a dropped connection (recovery, exactly once in order).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Ringcast } from '../index.js';
import { startServer, WebSocket, nextEvent, waitFor, sleep } from '../testlib/helpers.js';

const FAST = { WebSocket, minReconnectDelay: 20, maxReconnectDelay: 200 };

test('request timeout: a stopped server (SIGSTOP) → Error{code:"timeout"}; the connection survives', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const rc = new Ringcast(server.url, FAST);
  t.after(() => rc.close());
  await rc.connect();
  server.signal('SIGSTOP');
  try {
    await assert.rejects(rc.publish('stopped', 1, { timeout: 300 }), (e) => e instanceof Error && e.code === 'timeout');
    await assert.rejects(rc.history('stopped', { timeout: 300 }), { code: 'timeout' });
    await assert.rejects(rc.presence('stopped', { timeout: 300 }), { code: 'timeout' });
  } finally {
    server.signal('SIGCONT');
  }
  assert.equal(rc.state, 'connected');
  const { offset } = await rc.publish('stopped', 2);
  assert.equal(offset, 2); // the timed-out publish went through late; its ack was ignored
});

test('queued while disconnected (server killed), flushed in order after it restarts on the same port', async (t) => {
  let server = await startServer();
  t.after(() => server.kill());
  const rc = new Ringcast(server.url, FAST);
  t.after(() => rc.close());
  await rc.connect();
  const sub = rc.subscribe('queue:room');
  await sub.ready;
  const got = [];
  sub.on('message', (m) => got.push(m.payload));
  const down = nextEvent(rc, 'state', (s) => s.state === 'disconnected');
  await server.kill();
  await down;
  const queued = [1, 2, 3].map((n) => rc.publish('queue:room', n));
  let settled = 0;
  queued.forEach((p) => p.then(() => settled++, () => settled++));
  await sleep(100);
  assert.equal(settled, 0, 'queued requests wait for a connection');
  server = await server.restart();
  const acks = await Promise.all(queued);
  assert.deepEqual(acks.map((a) => a.offset), [1, 2, 3]);
  await waitFor(() => got.length === 3, 'the queued publications');
  assert.deepEqual(got, [1, 2, 3]);
  assert.equal(rc.state, 'connected');
});

test('recovery across a server restart: subscribed{recovered:false} and the next message arrives', async (t) => {
  let server = await startServer();
  t.after(() => server.kill());
  const rc = new Ringcast(server.url, FAST);
  t.after(() => rc.close());
  await rc.connect();
  const sub = rc.subscribe('restart:room', { recover: true });
  const first = await sub.ready;
  const got = [];
  sub.on('message', (m) => got.push(m.offset));
  for (let i = 0; i < 3; i++) await rc.publish('restart:room', i);
  await waitFor(() => got.length === 3, 'three messages');
  const resubscribed = nextEvent(sub, 'subscribed');
  await server.kill();
  server = await server.restart();
  const info = await resubscribed;
  assert.equal(info.wasRecovering, true);
  assert.equal(info.recovered, false);
  assert.notEqual(info.epoch, first.epoch);
  assert.equal(info.offset, 0);
  const other = new Ringcast(server.url, FAST);
  t.after(() => other.close());
  await other.connect();
  assert.deepEqual((await other.publish('restart:room', 'after')).offset, 1);
  await waitFor(() => got.length === 4, 'the message after the restart');
  assert.deepEqual(got, [1, 2, 3, 1]);
  assert.equal(sub.offset, 1);
  assert.equal(sub.epoch, info.epoch);
});

test('recovery within one server lifetime: a dropped socket misses nothing and sees nothing twice', async (t) => {
  // History must hold what the dropped client misses (up to 150 here; the default is 100).
  const server = await startServer({ config: '[[channels]]\npattern = "recover:*"\nhistory_size = 1000\n' });
  t.after(() => server.kill());
  let gate = Promise.resolve();
  const a = new Ringcast(server.url, { ...FAST, token: async () => (await gate, null) });
  const b = new Ringcast(server.url, FAST);
  t.after(() => (a.close(), b.close()));
  await Promise.all([a.connect(), b.connect()]);
  const channel = 'recover:room';
  const sub = a.subscribe(channel);
  await sub.ready;
  const got = [];
  const subscribed = [];
  sub.on('message', (m) => got.push(m));
  sub.on('subscribed', (i) => subscribed.push(i));
  const publish = (from, to) =>
    Promise.all(Array.from({ length: to - from + 1 }, (_, i) => b.publish(channel, { n: from + i })));

  await publish(1, 50);
  await waitFor(() => got.length === 50, 'the first 50');
  let release;
  gate = new Promise((r) => (release = r)); // hold a's reconnect until b has published more
  const burst = publish(51, 100); // partly in flight when the socket dies
  const down = nextEvent(a, 'state', (s) => s.state === 'disconnected');
  a._ws._socket.destroy();
  await down;
  await burst;
  await publish(101, 120);
  release();
  const tail = publish(121, 200); // races the replay
  await tail;
  await waitFor(() => got.length >= 200 && a.state === 'connected', 'all 200', 30000);
  await b.ping();
  await a.ping();
  assert.deepEqual(got.map((m) => m.offset), Array.from({ length: 200 }, (_, i) => i + 1));
  assert.deepEqual(got.map((m) => m.payload.n), Array.from({ length: 200 }, (_, i) => i + 1));
  assert.equal(subscribed.length, 1);
  assert.equal(subscribed[0].wasRecovering, true);
  assert.equal(subscribed[0].recovered, true);
  assert.ok(subscribed[0].offset >= 120, 'the ack came after what a missed, which was replayed');
});

test('a gap longer than history: subscribed{recovered:false} on the same epoch, then the stream goes on', async (t) => {
  const server = await startServer({ config: '[[channels]]\npattern = "short:*"\nhistory_size = 10\n' });
  t.after(() => server.kill());
  let gate = Promise.resolve();
  const a = new Ringcast(server.url, { ...FAST, token: async () => (await gate, null) });
  const b = new Ringcast(server.url, FAST);
  t.after(() => (a.close(), b.close()));
  await Promise.all([a.connect(), b.connect()]);
  const sub = a.subscribe('short:room');
  const first = await sub.ready;
  const got = [];
  sub.on('message', (m) => got.push(m.offset));
  for (let i = 1; i <= 5; i++) await b.publish('short:room', i);
  await waitFor(() => got.length === 5, 'five messages');
  let release;
  gate = new Promise((r) => (release = r));
  const down = nextEvent(a, 'state', (s) => s.state === 'disconnected');
  a._ws._socket.destroy();
  await down;
  for (let i = 6; i <= 25; i++) await b.publish('short:room', i);
  const resubscribed = nextEvent(sub, 'subscribed');
  release();
  const info = await resubscribed;
  assert.deepEqual(info, { channel: 'short:room', recovered: false, wasRecovering: true, offset: 25, epoch: first.epoch });
  await b.publish('short:room', 26);
  await waitFor(() => got.length === 6, 'the next message');
  assert.deepEqual(got, [1, 2, 3, 4, 5, 26]);
});

test('dead-link detection: no traffic for ping_ms + margin → reconnect', async (t) => {
  const server = await startServer({ args: ['--ping-interval', '2', '--ping-min', '1', '--ping-max', '2'] });
  t.after(() => server.kill());
  const rc = new Ringcast(server.url, { ...FAST, pingMargin: 3000 });
  t.after(() => rc.close());
  await rc.connect();
  assert.equal(rc.pingMs, 1000);
  const states = [];
  rc.on('state', (s) => states.push(s));
  await sleep(5000); // idle but alive: the server's pings are traffic
  assert.deepEqual(states, []);
  const down = nextEvent(rc, 'state', (s) => s.state === 'disconnected');
  server.signal('SIGSTOP');
  let ev;
  try {
    ev = await down;
  } finally {
    server.signal('SIGCONT');
  }
  assert.match(ev.reason, /no traffic/);
  await nextEvent(rc, 'state', (s) => s.state === 'connected');
  assert.equal(typeof (await rc.publish('alive', 1)).offset, 'number');
});
