// /dashboard in a real browser: Debian's Chromium (/usr/bin/chromium) driven
// by playwright-core, against the real server binary ($RINGCAST_BIN) started
// with an API key. The page first asks for the key, then takes it from the
// URL fragment, goes live, and follows load generated from Node (echo, /ws
// publish/subscribe, /broadcast, one client over the rate limit and one that
// never answers pings) until its tiles show it. A screenshot is written to
// $DASHBOARD_SCREENSHOT (default: the temp dir). DASHBOARD_LOAD_SECONDS=N
// keeps a varying load running N more seconds first (for docs/img).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { checkEnv, startServer, stop, browser, newPage, sleep, WAIT } from '../testlib/lib.js';

// A minimal RFC 6455 client on a raw socket (Node 20 has no global
// WebSocket; clients/browser depends on playwright-core only). Frames out
// are masked; pings are answered unless `mute`; data frames are counted.
function frame(op, payload) {
  const body = Buffer.from(payload);
  const len = body.length;
  const head = len < 126 ? Buffer.from([0x80 | op, 0x80 | len])
    : Buffer.from([0x80 | op, 0x80 | 126, len >> 8, len & 0xff]);
  const mask = crypto.randomBytes(4);
  for (let i = 0; i < len; i++) body[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

function wsConnect(addr, pathname, { mute = false } = {}) {
  const i = addr.lastIndexOf(':');
  const sock = net.connect(Number(addr.slice(i + 1)), addr.slice(0, i));
  const ws = {
    received: 0,
    closed: false,
    send: (text) => { if (!ws.closed) sock.write(frame(1, text)); },
    close: () => { if (!ws.closed) { ws.closed = true; sock.end(frame(8, Buffer.from([0x03, 0xe8]))); } },
    destroy: () => { ws.closed = true; sock.destroy(); },
  };
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    let open = false;
    sock.setNoDelay(true);
    sock.on('error', (e) => { ws.closed = true; if (!open) reject(e); });
    sock.on('close', () => { ws.closed = true; if (!open) reject(new Error(`${pathname}: closed before 101`)); });
    sock.on('connect', () => sock.write(`GET ${pathname} HTTP/1.1\r\nHost: ${addr}\r\nUpgrade: websocket\r\n`
      + `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\n`
      + 'Sec-WebSocket-Version: 13\r\n\r\n'));
    sock.on('data', (d) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      if (!open) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = buf.subarray(0, end).toString('latin1').split('\r\n')[0];
        if (!status.startsWith('HTTP/1.1 101')) { sock.destroy(); return reject(new Error(`${pathname}: ${status}`)); }
        open = true;
        buf = buf.subarray(end + 4);
        resolve(ws);
      }
      for (;;) { // every complete frame in the buffer (the server never masks)
        if (buf.length < 2) return;
        const op = buf[0] & 0x0f;
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
        if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
        if (buf.length < off + len) return;
        const payload = buf.subarray(off, off + len);
        buf = buf.subarray(off + len);
        if (op === 9 && !mute) sock.write(frame(10, payload));
        else if (op === 8) ws.close();
        else if (op <= 2) ws.received++;
      }
    });
  });
}

// Load from Node, bounded: every 50 ms each echo client sends `k` messages
// (k from `level()`), one /ws client publishes to demo:x (which the others
// subscribe to) and one /broadcast client sends; at most `cap` ms in all.
async function startLoad(addr, { echo = 16, subscribers = 4, broadcast = 2, cap = 30000 } = {}) {
  const all = [];
  const open = async (p, opts) => { const ws = await wsConnect(addr, p, opts); all.push(ws); return ws; };
  const echoes = await Promise.all(Array.from({ length: echo }, () => open('/echo')));
  const subs = await Promise.all(Array.from({ length: subscribers }, () => open('/ws')));
  subs.forEach((ws, i) => ws.send(JSON.stringify({ type: 'subscribe', channel: 'demo:x', id: i })));
  const casts = await Promise.all(Array.from({ length: broadcast }, () => open('/broadcast')));
  await open('/echo', { mute: true }); // never answers pings: a heartbeat close
  const greedy = await open('/echo'); // over --max-msgs-per-sec: a rate-limit close
  for (let i = 0; i < 400; i++) greedy.send('x');
  const load = { sent: 0, connections: all.length, level: () => 1, stopped: false };
  const started = Date.now();
  const tick = setInterval(() => {
    if (Date.now() - started > cap) return load.stop();
    const k = Math.max(0, Math.round(load.level((Date.now() - started) / 1000)));
    for (const ws of echoes) for (let i = 0; i < k; i++) { ws.send(`hello ${load.sent}`); load.sent++; }
    if (k) {
      subs[0].send(JSON.stringify({ type: 'publish', channel: 'demo:x', payload: { n: load.sent } }));
      casts[0].send(`cast ${load.sent}`);
      load.sent += 2;
    }
  }, 50);
  load.stop = () => {
    if (load.stopped) return;
    load.stopped = true;
    clearInterval(tick);
    for (const ws of all) ws.close();
  };
  return load;
}

const tile = (page, id) => page.evaluate((i) => document.querySelector(`#tile-${i} .value`).dataset.value, id);

test('the dashboard asks for the API key, goes live, and follows load', async () => {
  checkEnv();
  const server = await startServer('127.0.0.1:0', [
    '--api-key', 'testkey', '--ping-interval', '1', '--ping-min', '0.5', '--ping-max', '2',
    '--max-msgs-per-sec', '200',
  ]);
  const ctx = await browser({ width: 1280, height: 800 });
  const errors = [];
  let load;
  try {
    // No key: the page says so and offers a form; a wrong key is refused.
    const ask = await newPage(ctx, 'no key', errors);
    await ask.goto(`http://${server.addr}/dashboard`);
    await ask.waitForSelector('#status.auth', { timeout: WAIT });
    assert.match(await ask.textContent('#status'), /API key required/);
    assert.ok(await ask.isVisible('#keyform'), 'the key form is shown');
    await ask.fill('#key', 'wrong');
    await ask.press('#key', 'Enter');
    await ask.waitForFunction(() => /wrong API key/.test(document.querySelector('#status').textContent),
      null, { timeout: WAIT });
    assert.equal(await ask.evaluate(() => window.ringcastDashboard.samples), 0);
    await ask.close();

    // The key in the fragment: live, and the fragment leaves the address bar.
    const page = await newPage(ctx, 'dashboard', errors);
    await page.goto(`http://${server.addr}/dashboard#key=testkey`);
    await page.waitForSelector('#status.live', { timeout: WAIT });
    assert.equal(await page.evaluate(() => location.hash), '');
    assert.ok(!(await page.isVisible('#keyform')));
    const first = await page.evaluate(() => window.ringcastDashboard.samples);
    assert.ok(first >= 1);
    assert.equal(await page.evaluate(() => window.ringcastDashboard.last.cores), 2);
    assert.equal(await page.textContent('#cores'), '2');
    assert.ok(await page.locator('.chart[data-metric] canvas').count() >= 9, 'charts');
    for (const m of ['ringcast_connections', 'ringcast_messages_in_total', 'ringcast_ping_rtt_seconds']) {
      assert.equal(await page.locator(`.chart[data-metric~="${m}"] canvas`).count(), 1, m);
    }

    load = await startLoad(server.addr);
    const n = load.connections;
    // Tiles follow: messages in per second, every load connection, an RTT.
    await page.waitForFunction(() => Number(document.querySelector('#tile-in-rate .value').dataset.value) > 0,
      null, { timeout: WAIT });
    await page.waitForFunction((min) => Number(document.querySelector('#tile-connections .value').dataset.value) >= min,
      n, { timeout: WAIT, polling: 100 });
    await page.waitForFunction((s) => window.ringcastDashboard.samples >= s + 3, first, { timeout: WAIT });
    await page.waitForFunction(() => Number(document.querySelector('#tile-rtt-p99 .value').dataset.value) > 0,
      null, { timeout: WAIT });
    for (const id of ['out-rate', 'deliveries-rate']) {
      await page.waitForFunction((i) => Number(document.querySelector(`#tile-${i} .value`).dataset.value) > 0,
        id, { timeout: WAIT });
    }
    assert.equal(await tile(page, 'subscriptions'), '4');
    assert.match(await page.textContent('#tile-in-rate .value'), /\/s$/);
    assert.equal(await page.locator('#cores-table tbody tr').count(), 3, 'two cores and the total');

    // For docs/img: a longer, varying load first.
    const extra = Number(process.env.DASHBOARD_LOAD_SECONDS || 0);
    if (extra > 0) {
      load.stop();
      load = await startLoad(server.addr, { cap: (extra + 5) * 1000 });
      load.level = (t) => 1.5 + Math.sin(t / 9) + (t % 40 < 12 ? 1.5 : 0);
      await sleep(extra * 1000);
      await page.mouse.move(1100, 360); // a tooltip on the deliveries chart
    }
    const shot = process.env.DASHBOARD_SCREENSHOT || path.join(os.tmpdir(), 'ringcast-dashboard.png');
    await page.waitForSelector('#status.live', { timeout: WAIT });
    await page.screenshot({ path: shot });
    assert.ok(fs.statSync(shot).size > 10000, `a screenshot (${shot})`);
    load.stop();

    // The server goes away: the page says so instead of showing old numbers as live.
    await stop(server.child, 'SIGKILL');
    await page.waitForSelector('#status.error, #status.stale', { timeout: WAIT });
    assert.deepEqual(errors, [], 'no page errors');
  } finally {
    if (load) load.stop();
    await ctx.close();
    await stop(server.child);
  }
});
