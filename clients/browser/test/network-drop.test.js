// A network failure under a live subscription, in a real browser: the page's
// WebSocket goes through a TCP proxy written here, which can cut every
// proxied connection at once with an RST (no close frame, like a link that
// died) and refuse new ones for a while. A backend publishes a numbered
// stream through POST /api/publish all along, part of it while the link is
// down. The page's SDK reconnects, resubscribes with `since`, is answered
// `recovered: true`, and its handler sees every publication exactly once, in
// order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  WAIT, browser, checkEnv, newPage, openBlank, publish, sleep, startServer, stop,
} from '../testlib/lib.js';

const KEY = 'browser-test-api-key';
const N = 200; // publications
const PACE = 10; // ms between two publications
const DOWN_AT = 61; // the first drop, before this publication; the link stays down ...
const UP_AT = 101; // ... until before this one
const DROP2_AT = 141; // the second drop (the page reconnects at once)

/**
 * A TCP proxy on 127.0.0.1 to `target` ('IP:PORT'). `drop({ down })` resets
 * every proxied connection, both sides, and with `down` resets every new one
 * as soon as it is accepted, until `up()`.
 */
function startProxy(target) {
  const i = target.lastIndexOf(':');
  const to = { host: target.slice(0, i), port: Number(target.slice(i + 1)) };
  const pairs = new Set();
  let down = false;
  const counts = { accepted: 0, refused: 0, dropped: 0 };
  const server = net.createServer((client) => {
    counts.accepted++;
    if (down) {
      counts.refused++;
      client.on('error', () => {});
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(to);
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      s.on('error', end);
      s.on('close', end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      resolve({
        addr: `127.0.0.1:${server.address().port}`,
        counts,
        drop({ down: stayDown = false } = {}) {
          down = stayDown;
          const live = [...pairs];
          pairs.clear();
          for (const { client, upstream } of live) {
            client.resetAndDestroy();
            upstream.resetAndDestroy();
          }
          counts.dropped += live.length;
          return live.length;
        },
        up() {
          down = false;
        },
        close() {
          this.drop();
          return new Promise((r) => server.close(r));
        },
      });
    });
  });
}

test('a subscription in the browser survives network drops: every publication once, in order', async (t) => {
  checkEnv();
  const server = await startServer('127.0.0.1:0', ['--api-key', KEY, '--history-size', '1000']);
  const proxy = await startProxy(server.addr);
  const ctx = await browser();
  const errors = [];
  const channel = 'drop:stream';
  try {
    const page = await newPage(ctx, 'subscriber', errors);
    await openBlank(page, server.addr);
    await page.evaluate(async ({ url, channel }) => {
      const { Ringcast } = await import('/ringcast.js');
      const log = { states: [], subscribed: [], messages: [], subErrors: [] };
      window.log = log;
      const rc = new Ringcast(url, {
        minReconnectDelay: 100,
        maxReconnectDelay: 400,
        // Generous: a slow machine must not turn into a give-up.
        connectTimeout: 15000,
        requestTimeout: 15000,
      });
      window.rc = rc;
      rc.on('state', (s) => log.states.push({ state: s.state, code: s.code }));
      await rc.connect();
      const sub = rc.subscribe(channel, { recover: true });
      sub.on('message', (m) => log.messages.push({ seq: m.payload.seq, offset: m.offset, epoch: sub.epoch }));
      sub.on('subscribed', (i) => log.subscribed.push({
        recovered: i.recovered, wasRecovering: i.wasRecovering, offset: i.offset, epoch: i.epoch,
      }));
      sub.on('error', (e) => log.subErrors.push(e.code));
      await sub.ready;
    }, { url: `ws://${proxy.addr}/ws`, channel });

    const received = (seq) => page.waitForFunction((k) => (window.log.messages.at(-1)?.seq ?? 0) >= k,
      seq, { timeout: WAIT });
    const statesNow = () => page.evaluate(() => window.log.states.length);
    const published = [];
    const drops = []; // { at, mark }: the publication before which it dropped, the page's state count then
    for (let seq = 1; seq <= N; seq++) {
      if (seq === DOWN_AT || seq === DROP2_AT) {
        // Mid-stream for the page too: it has part of the stream, and is connected.
        await received(seq - 11);
        await page.waitForFunction(() => window.rc.state === 'connected', null, { timeout: WAIT });
        const mark = await statesNow();
        const cut = proxy.drop({ down: seq === DOWN_AT });
        assert.ok(cut >= 1, `drop before ${seq}: the page's connection went through the proxy`);
        drops.push({ at: seq, mark });
      }
      if (seq === UP_AT) {
        // The page noticed (it may be retrying against the dead link); what
        // was published since the drop was published while it was down.
        await page.waitForFunction((m) => window.log.states.slice(m).some((s) => s.state === 'disconnected'),
          drops[0].mark, { timeout: WAIT });
        const now = await page.evaluate(() => ({
          state: window.rc.state, last: window.log.messages.at(-1).seq,
        }));
        assert.notEqual(now.state, 'connected', 'no connection while the link is down');
        assert.ok(now.last < DOWN_AT, `${now.last}: nothing arrived while the link was down`);
        proxy.up();
      }
      const r = await publish(server.addr, KEY, channel, { seq });
      assert.equal(r.published, 1);
      published.push(r.results[0]);
      await sleep(PACE);
    }

    // The last publication arrives whatever happened before it (a gap shows below).
    await received(N);
    const log = await page.evaluate(() => window.log);

    // A reconnect per drop: 'disconnected', then 'connected', after the drop.
    for (const [i, { at, mark }] of drops.entries()) {
      const after = log.states.slice(mark, drops[i + 1]?.mark).map((s) => s.state);
      const d = after.indexOf('disconnected');
      assert.ok(d >= 0, `drop before ${at}: no 'disconnected' (${after})`);
      assert.ok(after.indexOf('connected', d) > d, `drop before ${at}: no 'connected' after it (${after})`);
    }

    // Every publication once, in order: payloads 1..N, offsets those the
    // API returned, consecutive, of one epoch.
    assert.deepEqual(log.messages.map((m) => m.seq), Array.from({ length: N }, (_, i) => i + 1));
    assert.deepEqual(log.messages.map((m) => m.offset), published.map((p) => p.offset));
    const first = published[0].offset;
    assert.deepEqual(published.map((p) => p.offset), Array.from({ length: N }, (_, i) => first + i));
    const epoch = published[0].epoch;
    assert.ok(published.every((p) => p.epoch === epoch), 'one epoch');
    assert.ok(log.messages.every((m) => m.epoch === epoch), 'the page is on that epoch');

    // The first subscribe, then at least one recovered resubscribe per drop,
    // and nothing but recovered ones.
    assert.equal(log.subscribed[0].wasRecovering, false);
    assert.ok(log.subscribed.length >= 1 + drops.length,
      `${log.subscribed.length} acks for ${drops.length} drops`);
    for (const s of log.subscribed.slice(1)) {
      assert.deepEqual([s.wasRecovering, s.recovered, s.epoch], [true, true, epoch], JSON.stringify(s));
    }
    assert.deepEqual(log.subErrors, [], 'no subscription errors');
    assert.deepEqual(errors, [], 'no page errors');
    t.diagnostic(`drops ${drops.length}, proxied connections cut ${proxy.counts.dropped}, `
      + `refused while down ${proxy.counts.refused}, states ${log.states.map((s) => s.state).join(' ')}`);
  } finally {
    await ctx.close();
    await proxy.close();
    await stop(server.child);
  }
});
