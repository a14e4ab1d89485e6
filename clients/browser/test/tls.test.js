// wss:// in a real browser: the server serves TLS beside its plain port
// (--tls-listen) with a certificate made here by the openssl CLI; Chromium
// trusts exactly that key (--ignore-certificate-errors-spki-list, not a
// blanket ignore), loads a page over https, opens wss:// to /ws, subscribes
// and receives a publication made through the API. The server's TLS
// counters show the handshakes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARGS, CHROMIUM, WAIT, checkEnv, metric, publish, startServer, stop } from '../testlib/lib.js';

const KEY = 'browser-tls-api-key';
let dir;
let server;
let ctx;
let tlsPort;
const errors = [];

/** A port nothing listens on right now (the server takes it next). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function openssl(args, input) {
  return execFileSync('openssl', args, { cwd: dir, input, stdio: ['pipe', 'pipe', 'pipe'] });
}

before(async () => {
  checkEnv();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rc-browser-tls-'));
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '2', '-subj', '/CN=ringcast browser test', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', 'key.pem', '-out', 'cert.pem']);
  // The SPKI pin Chromium is told to accept: base64(SHA-256(SubjectPublicKeyInfo)).
  const pub = openssl(['x509', '-in', 'cert.pem', '-pubkey', '-noout']);
  const der = openssl(['pkey', '-pubin', '-outform', 'der'], pub);
  const spki = openssl(['dgst', '-sha256', '-binary'], der).toString('base64');
  tlsPort = await freePort();
  server = await startServer('127.0.0.1:0', [
    '--api-key', KEY,
    '--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem'),
    '--tls-listen', `127.0.0.1:${tlsPort}`,
  ]);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'rc-chromium-tls-'));
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...ARGS, `--ignore-certificate-errors-spki-list=${spki}`],
  });
  const close = ctx.close.bind(ctx);
  ctx.close = async () => {
    await close();
    fs.rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
  };
});

after(async () => {
  if (ctx) await ctx.close();
  if (server) await stop(server.child);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('Chromium loads a page over https, opens wss://, subscribes and receives', async () => {
  const okBefore = await metric(server.addr, 'ringcast_tls_handshakes_total', 'outcome="ok"');
  const page = await ctx.newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  const res = await page.goto(`https://localhost:${tlsPort}/healthz`);
  assert.equal(res.status(), 200);
  assert.equal((await res.text()).trim(), 'ok');
  const security = await res.securityDetails();
  assert.match(security.protocol, /^TLS 1\.3$/, `negotiated ${security.protocol}`);

  const opened = page.evaluate(async ({ wait }) => {
    const ws = new WebSocket(`wss://${location.host}/ws`);
    const queue = [];
    let waiter = null;
    ws.onmessage = (e) => {
      queue.push(JSON.parse(e.data));
      if (waiter) waiter();
    };
    const next = async () => {
      const deadline = Date.now() + wait;
      while (!queue.length) {
        if (Date.now() > deadline) throw new Error('no message');
        await new Promise((r) => { waiter = r; setTimeout(r, 100); });
      }
      return queue.shift();
    };
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('wss:// failed')); });
    const welcome = await next();
    ws.send(JSON.stringify({ type: 'subscribe', channel: 'tls:room', id: 1 }));
    const ack = await next();
    window.__next = next;
    return { welcome: welcome.type, ack, extensions: ws.extensions, url: ws.url };
  }, { wait: WAIT });
  const first = await opened;
  assert.equal(first.welcome, 'welcome');
  assert.equal(first.ack.type, 'ack');
  assert.equal(first.ack.id, 1);
  assert.match(first.url, /^wss:\/\/localhost:/);
  assert.match(first.extensions, /permessage-deflate/);

  await publish(server.addr, KEY, 'tls:room', { over: 'wss', n: 1 });
  const msg = await page.evaluate(() => window.__next());
  assert.deepEqual(msg, { type: 'message', channel: 'tls:room', offset: 1, payload: { over: 'wss', n: 1 } });

  // The page load and the WebSocket each completed a TLS handshake (one
  // connection may carry both: Chromium reuses it only for HTTP).
  const okAfter = await metric(server.addr, 'ringcast_tls_handshakes_total', 'outcome="ok"');
  assert.ok(okAfter - okBefore >= 2, `TLS handshakes: ${okAfter - okBefore}`);
  assert.ok((await metric(server.addr, 'ringcast_tls_versions_total', 'version="1.3"')) >= 2);
  assert.deepEqual(errors, []);
  await page.close();
});
