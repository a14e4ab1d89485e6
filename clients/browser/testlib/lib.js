// What every browser test shares: the real server binary ($RINGCAST_BIN) on
// 127.0.0.1, Debian's Chromium ($CHROMIUM) driven by playwright-core in a
// fresh profile, and small helpers for pages, the publish API, tokens and
// /metrics. Kept out of test/: node --test runs every .js file under a
// directory named test, not only *.test.js.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const BIN = process.env.RINGCAST_BIN;
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run',
];
/** How long anything may take before a test gives up waiting (ms): generous, never asserted. */
export const WAIT = 20000;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Fails early, with the fix, when the binary or the browser is missing. */
export function checkEnv() {
  assert.ok(BIN, 'set RINGCAST_BIN (tests/browser.rs does)');
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install chromium`);
}

/**
 * Starts ringcast on `listen` (e.g. '127.0.0.1:0') with `args` added;
 * resolves with `{ child, addr }` once it wrote its address.
 */
export function startServer(listen, args = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rc-browser-'));
  const addrFile = path.join(dir, 'addr');
  const child = spawn(BIN, ['--cores', '2', '--listen', listen, '--addr-file', addrFile, ...args], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  child.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + WAIT;
    const poll = () => {
      if (fs.existsSync(addrFile)) {
        const addr = fs.readFileSync(addrFile, 'utf8').trim();
        if (addr) return resolve({ child, addr });
      }
      if (child.exitCode !== null || Date.now() > deadline) {
        child.kill('SIGKILL');
        return reject(new Error(`ringcast did not start (exit ${child.exitCode})`));
      }
      setTimeout(poll, 50);
    };
    poll();
  });
}

/** Stops a child process with `signal`; resolves once it exited. */
export function stop(child, signal = 'SIGTERM') {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill(signal);
  });
}

/** A headless Chromium with a fresh profile (removed again on close). */
export async function browser(viewport = { width: 1100, height: 650 }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rc-chromium-'));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, viewport,
  });
  // The profile goes once Chromium has exited (close() resolves then; its
  // 'close' event comes earlier, while Chromium may still write there).
  const close = ctx.close.bind(ctx);
  ctx.close = async (...args) => {
    await close(...args);
    try {
      fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
    } catch {
      /* a leftover temporary directory is harmless */
    }
  };
  return ctx;
}

/** A new page in `ctx` whose uncaught errors are pushed to `errors`, tagged with `name`. */
export async function newPage(ctx, name, errors) {
  const page = await ctx.newPage();
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  return page;
}

/**
 * Opens a plain page of the server's origin (one that opens no WebSocket of
 * its own) so `await import('/ringcast.js')` works in `page.evaluate`.
 */
export async function openBlank(page, addr) {
  await page.goto(`http://${addr}/healthz`);
}

/** POST /api/publish with the API key; resolves with the parsed answer. */
export async function publish(addr, key, channel, payload) {
  const res = await fetch(`http://${addr}/api/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, payload }),
    signal: AbortSignal.timeout(WAIT),
  });
  const body = await res.text();
  assert.equal(res.status, 200, `publish: ${res.status} ${body}`);
  return JSON.parse(body);
}

/** Sums the series of `name` on every core whose labels include `match` (e.g. 'outcome="unauthorized"'). */
export async function metric(addr, name, match = '') {
  const res = await fetch(`http://${addr}/metrics`, { signal: AbortSignal.timeout(WAIT) });
  const text = await res.text();
  assert.equal(res.status, 200, `/metrics: ${res.status}`);
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name || !(m[2] || '').includes(match)) continue;
    sum += Number(m[3]);
    found = true;
  }
  assert.ok(found, `no ${name}{${match}} in /metrics`);
  return sum;
}

/** An HS256 JWT over `claims`, signed with `secret`. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}
