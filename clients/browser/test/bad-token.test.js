// A refused token in a real browser, against a server that requires JWTs
// (--auth-secret). A browser cannot see an HTTP 401 to an upgrade, so the
// server upgrades and closes with 4001; the SDK must stop there: connect()
// rejects, one 'closed' (4001), and no reconnect loop. Checked from both
// ends: the page's own state events, and the server's count of refused
// /ws upgrades (ringcast_handshakes_total{outcome="unauthorized"}).
//
// The wait after the refusal gives a loop time to show itself; it asserts no
// duration: a slower machine would make fewer attempts, not more.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT, browser, checkEnv, jwt, metric, newPage, openBlank, sleep, startServer, stop,
} from '../testlib/lib.js';

const SECRET = 'browser-test-auth-secret';
const MIN_DELAY = 100;
const MAX_DELAY = 400;
const exp = () => Math.floor(Date.now() / 1000) + 600;
const unauthorized = (addr) => metric(addr, 'ringcast_handshakes_total', 'outcome="unauthorized"');

let server;
let ctx;
const errors = [];

before(async () => {
  checkEnv();
  server = await startServer('127.0.0.1:0', ['--auth-secret', SECRET]);
  ctx = await browser();
});

after(async () => {
  if (ctx) await ctx.close();
  if (server) await stop(server.child);
});

/**
 * In a fresh page of the server's origin: a Ringcast with `token`, its state
 * events recorded, and connect()'s outcome (or 'pending' after WAIT).
 */
async function tryConnect(name, token) {
  const page = await newPage(ctx, name, errors);
  await openBlank(page, server.addr);
  const outcome = await page.evaluate(async ({ token, min, max, wait }) => {
    const { Ringcast } = await import('/ringcast.js');
    const states = [];
    window.states = states;
    const rc = new Ringcast('/ws', {
      token: () => token,
      minReconnectDelay: min,
      maxReconnectDelay: max,
      connectTimeout: wait,
    });
    window.rc = rc;
    rc.on('state', (s) => states.push({ state: s.state, code: s.code, reason: s.reason }));
    const timeout = new Promise((resolve) => setTimeout(() => resolve({ pending: true }), wait));
    return Promise.race([
      rc.connect().then(
        (welcome) => ({ connected: true, client: welcome.client }),
        (e) => ({ rejected: true, code: e.code, closeCode: e.closeCode, reason: e.reason }),
      ),
      timeout,
    ]);
  }, { token, min: MIN_DELAY, max: MAX_DELAY, wait: WAIT });
  return { page, outcome };
}

for (const [name, token] of [
  ['a token that is no JWT', () => 'not-a-jwt'],
  ['a well-formed token signed with another key', () => jwt('another-secret', { sub: 'mallory', exp: exp() })],
]) {
  test(`${name}: connect() rejects, one 'closed' 4001, one upgrade, no reconnect loop`, async () => {
    const before = await unauthorized(server.addr);
    const { page, outcome } = await tryConnect(name, token());
    try {
      const seen = () => page.evaluate(() => JSON.stringify(window.states));
      assert.deepEqual(outcome, {
        rejected: true, code: 'closed', closeCode: 4001, reason: outcome.reason,
      }, `${JSON.stringify(outcome)}, states ${await seen()}`);
      assert.match(outcome.reason, /^unauthorized: /);

      // Long enough for several reconnects if the client were retrying (each
      // delay is below MAX_DELAY); bounded, and no assertion on time.
      await sleep(5 * MAX_DELAY);
      const states = await page.evaluate(() => window.states);
      assert.deepEqual(states.map((s) => s.state), ['connecting', 'closed'], JSON.stringify(states));
      assert.equal(states[1].code, 4001);
      assert.equal(states[1].reason, outcome.reason);
      assert.equal(await page.evaluate(() => window.rc.state), 'closed');
      assert.equal(await unauthorized(server.addr) - before, 1, 'the server saw one refused /ws upgrade');
    } finally {
      await page.close();
    }
    assert.deepEqual(errors, [], 'no page errors');
  });
}

test('the control: a token signed with the secret connects', async () => {
  const before = await unauthorized(server.addr);
  const { page, outcome } = await tryConnect('valid', jwt(SECRET, { sub: 'alice', exp: exp() }));
  try {
    assert.equal(outcome.connected, true, JSON.stringify(outcome));
    assert.equal(typeof outcome.client, 'string');
    const states = await page.evaluate(() => {
      window.rc.close();
      return window.states.map((s) => s.state);
    });
    assert.deepEqual(states, ['connecting', 'connected', 'closed']);
    assert.equal(await unauthorized(server.addr), before, 'nothing refused');
  } finally {
    await page.close();
  }
  assert.deepEqual(errors, [], 'no page errors');
});
