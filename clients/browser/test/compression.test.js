// permessage-deflate in a real browser: Chromium offers the extension on
// every WebSocket, the server accepts it, and both directions are
// compressed. Checked from both ends: what the page sees (ws.extensions,
// exact echoes of text and binary, a channel publication) and the server's
// counters (messages it inflated, messages it compressed, compressed frames
// it sent).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT, browser, checkEnv, metric, newPage, openBlank, publish, startServer, stop,
} from '../testlib/lib.js';

const KEY = 'browser-compression-api-key';
let server;
let ctx;
const errors = [];

before(async () => {
  checkEnv();
  server = await startServer('127.0.0.1:0', ['--api-key', KEY]);
  ctx = await browser();
});

after(async () => {
  if (ctx) await ctx.close();
  if (server) await stop(server.child);
});

/** A JSON text like a chat log: compressible, not repetitive bytes. */
function chatLog(n) {
  const rows = [];
  for (let i = 0; JSON.stringify(rows).length < n; i++) {
    rows.push({ id: i, user: `user${i % 5}`, text: `message ${i} about the weather`, ts: 1700000000 + i * 17 });
  }
  return rows;
}

test('Chromium negotiates permessage-deflate; /echo round-trips compressed text and binary', async () => {
  const inflatedBefore = await metric(server.addr, 'ringcast_deflate_inflated_total');
  const compressedBefore = await metric(server.addr, 'ringcast_deflate_compressed_total');
  const page = await newPage(ctx, 'echo', errors);
  await openBlank(page, server.addr);
  const text = JSON.stringify(chatLog(3000));
  const result = await page.evaluate(async ({ text, wait }) => {
    const ws = new WebSocket(`ws://${location.host}/echo`);
    ws.binaryType = 'arraybuffer';
    const next = () => new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no echo')), wait);
      ws.onmessage = (e) => { clearTimeout(t); resolve(e.data); };
    });
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    const extensions = ws.extensions;
    ws.send(text);
    const textBack = await next();
    const bin = new Uint8Array(20000).map((_, i) => (i * 7) % 13);
    ws.send(bin);
    const binBack = new Uint8Array(await next());
    ws.send('tiny');
    const tinyBack = await next();
    ws.close(1000);
    return {
      extensions,
      textOk: textBack === text,
      binOk: binBack.length === bin.length && binBack.every((b, i) => b === bin[i]),
      tinyBack,
    };
  }, { text, wait: WAIT });
  assert.match(result.extensions, /^permessage-deflate/, JSON.stringify(result));
  assert.match(result.extensions, /server_no_context_takeover/);
  assert.match(result.extensions, /client_no_context_takeover/);
  assert.ok(result.textOk, 'text echoed exactly');
  assert.ok(result.binOk, 'binary echoed exactly');
  assert.equal(result.tinyBack, 'tiny');
  // Chromium compressed what it sent; the server compressed its echoes of
  // the two large messages (the tiny one is under --compression-min-bytes).
  assert.ok(await metric(server.addr, 'ringcast_deflate_inflated_total') >= inflatedBefore + 2);
  assert.ok(await metric(server.addr, 'ringcast_deflate_compressed_total') >= compressedBefore + 2);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a channel publication reaches Chromium compressed', async () => {
  const page = await newPage(ctx, 'channel', errors);
  await openBlank(page, server.addr);
  await page.evaluate(async (wait) => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    window.got = [];
    window.ws = ws;
    ws.onmessage = (e) => window.got.push(JSON.parse(e.data));
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    ws.send(JSON.stringify({ type: 'subscribe', channel: 'news', id: 1 }));
    const t0 = Date.now();
    while (!window.got.some((m) => m.type === 'ack' && m.id === 1)) {
      if (Date.now() - t0 > wait) throw new Error(`no subscribe ack: ${JSON.stringify(window.got)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }, WAIT);
  assert.match(await page.evaluate(() => window.ws.extensions), /^permessage-deflate/);
  const sentBefore = await metric(server.addr, 'ringcast_deflate_sent_total');
  const payload = chatLog(2000);
  await publish(server.addr, KEY, 'news', payload);
  const message = await page.evaluate(async (wait) => {
    const t0 = Date.now();
    for (;;) {
      const m = window.got.find((x) => x.type === 'message');
      if (m) return m;
      if (Date.now() - t0 > wait) throw new Error(`no message: ${JSON.stringify(window.got)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }, WAIT);
  assert.equal(message.channel, 'news');
  assert.deepEqual(message.payload, payload);
  assert.ok(await metric(server.addr, 'ringcast_deflate_sent_total') >= sentBefore + 1,
    'the server sent the publication compressed');
  assert.deepEqual(errors, []);
  await page.close();
});
