// Connecting to the real server: welcome, states, typed routing, ping,
// server error replies, close.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Ringcast } from '../index.js';
import { startServer, WebSocket, nextEvent, waitFor } from '../testlib/helpers.js';

const CONFIG = `
[[channels]]
pattern = "nohist:*"
history_size = 0
`;

let server;
before(async () => {
  server = await startServer({ config: CONFIG });
});
after(() => server.kill());

test('connect resolves with the welcome; states connecting → connected → closed', async () => {
  const rc = new Ringcast(server.url, { WebSocket });
  const states = [];
  rc.on('state', (s) => states.push(s));
  const welcomes = [];
  rc.on('welcome', (w) => welcomes.push(w));
  assert.equal(rc.state, 'disconnected');
  const welcome = await rc.connect();
  assert.equal(welcome.type, 'welcome');
  assert.equal(typeof welcome.client, 'string');
  assert.ok(welcome.core === 0 || welcome.core === 1);
  assert.equal(typeof welcome.ping_ms, 'number');
  assert.deepEqual(welcomes, [welcome]);
  assert.equal(rc.client, welcome.client);
  assert.equal(rc.core, welcome.core);
  assert.equal(rc.pingMs, welcome.ping_ms);
  assert.equal(rc.state, 'connected');
  assert.deepEqual(await rc.connect(), welcome); // already connected
  assert.equal(typeof (await rc.ping()), 'number');
  const pong = nextEvent(rc, 'pong');
  await rc.ping();
  assert.equal((await pong).type, 'pong');
  rc.close();
  rc.close();
  assert.deepEqual(
    states.map((s) => s.state),
    ['connecting', 'connected', 'closed'],
  );
  assert.deepEqual(states[2], { state: 'closed', code: 1000, reason: 'client closed' });
  await assert.rejects(rc.publish('a', 1), { code: 'closed' });
});

test('server error replies reject with Error{code, message}; the connection stays open', async () => {
  const rc = new Ringcast(server.url, { WebSocket });
  await rc.connect();
  const errors = [];
  rc.on('error', (e) => errors.push(e.code));
  await assert.rejects(rc.publish('bad channel', 1), (e) => e instanceof Error && e.code === 'bad_channel' && /channel/.test(e.message));
  await assert.rejects(rc.history('nohist:a'), { code: 'history_disabled' });
  await assert.rejects(rc.presence('room'), { code: 'presence_disabled' });
  await assert.rejects(rc.history('room', { limit: 1e6 }), { code: 'bad_limit' });
  const sub = rc.subscribe('room', { joinLeave: true });
  const failed = nextEvent(sub, 'error');
  await assert.rejects(sub.ready, { code: 'join_leave_disabled' });
  assert.equal((await failed).code, 'join_leave_disabled');
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(rc.getSubscription('room'), null);
  assert.deepEqual(errors, ['bad_channel', 'history_disabled', 'presence_disabled', 'bad_limit', 'join_leave_disabled']);
  assert.equal(rc.state, 'connected');
  assert.equal(typeof (await rc.publish('room', 'still here')).offset, 'number');
  rc.close();
});

test('subscribe twice throws; unsubscribe stops delivery', async () => {
  const rc = new Ringcast(server.url, { WebSocket });
  await rc.connect();
  const sub = rc.subscribe('twice');
  assert.throws(() => rc.subscribe('twice'), { code: 'already_subscribed' });
  await sub.ready;
  const got = [];
  sub.on('message', (m) => got.push(m.payload));
  await rc.publish('twice', 1);
  await waitFor(() => got.length === 1, 'the first message');
  await sub.unsubscribe();
  assert.equal(sub.state, 'unsubscribed');
  await rc.publish('twice', 2);
  await rc.ping(); // anything for the channel would have come before the pong
  assert.deepEqual(got, [1]);
  const again = rc.subscribe('twice'); // allowed once unsubscribed
  await again.ready;
  rc.close();
});
