// Tokens against a server started with --auth-secret.
import { test, before, after } from 'node:test';
import { createServer } from 'node:http';
import assert from 'node:assert/strict';
import { Ringcast } from '../index.js';
import { startServer, WebSocket, nextEvent, waitFor, sleep, jwt } from '../testlib/helpers.js';

const SECRET = 'test-secret-for-the-js-client';
let server;
before(async () => {
  server = await startServer({ args: ['--auth-secret', SECRET, '--presence'] });
});
after(() => server.kill());

/** A `ws` WebSocket that records every URL it is opened with. */
function countingWebSocket() {
  const urls = [];
  class Counting extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      urls.push(url);
    }
  }
  return { Counting, urls };
}

const exp = () => Math.floor(Date.now() / 1000) + 600;

test('a valid token is sent as ?token= before every (re)connect', async () => {
  const { Counting, urls } = countingWebSocket();
  let calls = 0;
  const rc = new Ringcast(server.url, {
    WebSocket: Counting,
    minReconnectDelay: 20,
    maxReconnectDelay: 100,
    token: async () => {
      calls++;
      return jwt(SECRET, { sub: `user-${calls}`, exp: exp() });
    },
  });
  await rc.connect();
  assert.equal(calls, 1);
  assert.equal(new URL(urls[0]).searchParams.get('token').split('.').length, 3);
  assert.equal((await rc.presence('auth:room')).count, 0);
  const sub = rc.subscribe('auth:room');
  await sub.ready;
  assert.deepEqual((await rc.presence('auth:room')).clients, [{ client: rc.client, user: 'user-1' }]);
  const back = nextEvent(rc, 'state', (s) => s.state === 'connected');
  rc._ws._socket.destroy();
  await back;
  assert.equal(calls, 2);
  assert.equal(urls.length, 2);
  assert.notEqual(urls[0], urls[1]);
  await waitFor(async () => (await rc.presence('auth:room')).clients.some((c) => c.user === 'user-2'), 'user-2');
  rc.close();
});

test("a token's channel claims: forbidden outside them", async () => {
  const rc = new Ringcast(server.url, {
    WebSocket,
    token: jwt(SECRET, { sub: 'limited', exp: exp(), channels: ['mine:*'] }),
  });
  await rc.connect();
  assert.equal(typeof (await rc.publish('mine:a', 1)).offset, 'number');
  await assert.rejects(rc.publish('theirs:a', 1), { code: 'forbidden' });
  const sub = rc.subscribe('theirs:a');
  await assert.rejects(sub.ready, { code: 'forbidden' });
  rc.close();
});

for (const [name, token, reason] of [
  ['a bad token', () => 'not-a-jwt', 'unauthorized: invalid token'],
  ['an expired token', () => jwt(SECRET, { sub: 'old', exp: Math.floor(Date.now() / 1000) - 3600 }), 'unauthorized: token expired'],
  ['no token', () => null, 'unauthorized: missing token'],
]) {
  test(`${name}: state 'closed' (4001) once, no reconnect loop`, async () => {
    const { Counting, urls } = countingWebSocket();
    let calls = 0;
    const rc = new Ringcast(server.url, {
      WebSocket: Counting,
      minReconnectDelay: 1,
      maxReconnectDelay: 5,
      token: async () => (calls++, token()),
    });
    const states = [];
    rc.on('state', (s) => states.push(s));
    await assert.rejects(rc.connect(), (e) => e.code === 'closed' && e.closeCode === 4001);
    await sleep(300); // a loop would have made dozens of attempts by now
    assert.equal(calls, 1);
    assert.equal(urls.length, 1);
    const closed = states.filter((s) => s.state === 'closed');
    assert.equal(closed.length, 1);
    // The server closes with 4001 after the upgrade; an older one answered
    // HTTP 401 before it, which `ws` reports (status: 401). Either stops.
    const { status, ...rest } = closed[0];
    assert.deepEqual(rest, { state: 'closed', code: 4001, reason });
    assert.ok(status === undefined || status === 401);
    assert.deepEqual(states.map((s) => s.state), ['connecting', 'closed']);
    await assert.rejects(rc.publish('x', 1), { code: 'closed' });
  });
}

test('an HTTP 401 or 403 answer to the upgrade (reported by ws) stops the client too', async (t) => {
  for (const [status, code, reason] of [
    [401, 4001, 'unauthorized: invalid token'],
    [403, 4003, 'forbidden: origin not allowed'],
  ]) {
    let requests = 0;
    const http = createServer();
    http.on('upgrade', (req, socket) => {
      requests++;
      socket.on('error', () => {}); // the client may reset it first (it gives up, or closes)
      const body = reason.split(': ')[1];
      socket.end(
        `HTTP/1.1 ${status} No\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
    await new Promise((r) => http.listen(0, '127.0.0.1', r));
    t.after(() => http.close());
    const rc = new Ringcast(`ws://127.0.0.1:${http.address().port}/ws`, {
      WebSocket,
      minReconnectDelay: 1,
      maxReconnectDelay: 5,
    });
    const states = [];
    rc.on('state', (s) => states.push(s));
    await assert.rejects(rc.connect(), (e) => e.code === 'closed' && e.closeCode === code);
    await sleep(200);
    assert.equal(requests, 1);
    assert.deepEqual(states, [{ state: 'connecting' }, { state: 'closed', code, reason, status }]);
  }
});

test('an HTTP 503 answer to the upgrade is retried', async (t) => {
  let requests = 0;
  const http = createServer();
  http.on('upgrade', (req, socket) => {
    requests++;
    socket.on('error', () => {}); // rc.close() below may reset a connection still being answered
    socket.end('HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  t.after(() => http.close());
  const rc = new Ringcast(`ws://127.0.0.1:${http.address().port}/ws`, { WebSocket, minReconnectDelay: 1, maxReconnectDelay: 5 });
  const states = [];
  rc.on('state', (s) => states.push(s));
  rc.connect();
  await waitFor(() => requests >= 3, 'three attempts');
  rc.close();
  assert.equal(states.find((s) => s.state === 'disconnected').status, 503);
});
