// /demo in a real browser: Debian's Chromium (/usr/bin/chromium) driven by
// playwright-core, against the real server binary ($RINGCAST_BIN), which
// serves the page and /ringcast.js itself. Two browser profiles chat; the
// server is killed and restarted on the same port and both pages come back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WAIT, browser, checkEnv, newPage, startServer, stop } from '../testlib/lib.js';

const texts = () => [...document.querySelectorAll('.log:not([hidden]) .text')].map((e) => e.textContent);

test('two browsers chat through /demo, with presence, and survive a server restart', async () => {
  checkEnv();
  let server = await startServer('127.0.0.1:0');
  const ctxs = [await browser(), await browser()];
  const errors = [];
  try {
    const pages = [];
    for (const [i, nick] of ['alice', 'bob'].entries()) {
      const p = await newPage(ctxs[i], nick, errors);
      await p.goto(`http://${server.addr}/demo`);
      await p.waitForSelector('#conn.connected', { timeout: WAIT });
      await p.fill('#nick', nick);
      await p.press('#nick', 'Enter');
      await p.click('#rooms button:has-text("demo:lobby")');
      pages.push(p);
    }
    const [a, b] = pages;
    // Markup in a message is shown as text, never interpreted.
    const hello = `hello <b>bob</b> ${Date.now()}`;
    await a.fill('#text', hello);
    await a.press('#text', 'Enter');
    await b.waitForFunction((s) => [...document.querySelectorAll('.log:not([hidden]) .text')]
      .some((e) => e.textContent === s), hello, { timeout: WAIT });
    assert.equal(await b.evaluate(() => document.querySelectorAll('.log b').length), 0);
    await b.fill('#text', 'hi alice');
    await b.press('#text', 'Enter');
    await a.waitForFunction(() => [...document.querySelectorAll('.log:not([hidden]) .text')]
      .some((e) => e.textContent === 'hi alice'), null, { timeout: WAIT });
    for (const p of pages) {
      await p.waitForFunction(() => document.querySelectorAll('.people:not([hidden]) li').length === 2,
        null, { timeout: WAIT });
    }
    const seen = await a.evaluate(texts);
    assert.equal(seen.filter((t) => t === hello).length, 1, 'once');

    // Killed and restarted on the same port: both pages reconnect by
    // themselves (a new epoch: the page says messages may be missing) and
    // chat again.
    const port = server.addr.split(':').pop();
    await stop(server.child, 'SIGKILL');
    await a.waitForSelector('#conn.disconnected', { timeout: WAIT });
    server = await startServer(`127.0.0.1:${port}`);
    for (const p of pages) await p.waitForSelector('#conn.connected', { timeout: 60000 });
    // The resubscribe's ack came with recovered:false and a new epoch (the
    // in-memory history died with the process), and each page says so.
    for (const p of pages) {
      await p.waitForFunction(() => [...document.querySelectorAll('.log:not([hidden]) .note')]
        .some((e) => e.textContent === 'The server restarted: some messages may be missing'),
      null, { timeout: WAIT });
    }
    await a.waitForFunction(() => document.querySelectorAll('.people:not([hidden]) li').length === 2,
      null, { timeout: WAIT });
    await b.fill('#text', 'after restart');
    await b.press('#text', 'Enter');
    await a.waitForFunction(() => [...document.querySelectorAll('.log:not([hidden]) .text')]
      .some((e) => e.textContent === 'after restart'), null, { timeout: WAIT });
    const shot = path.join(os.tmpdir(), 'ringcast-demo.png');
    await a.screenshot({ path: shot });
    assert.ok(fs.statSync(shot).size > 1000, 'a screenshot');
    assert.deepEqual(errors, [], 'no page errors');
  } finally {
    for (const c of ctxs) await c.close();
    await stop(server.child);
  }
});
