// Test support (not a test file): spawns the real ringcast binary and waits
// for events. The binary is $RINGCAST_BIN, else the repository's
// target/release/ringcast (or target/debug/ringcast).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';

export { WebSocket };

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..', '..');

export function binary() {
  const candidates = [
    process.env.RINGCAST_BIN,
    join(repo, 'target', 'release', 'ringcast'),
    join(repo, 'target', 'debug', 'ringcast'),
  ].filter(Boolean);
  for (const c of candidates) if (existsSync(c)) return c;
  throw new Error(
    `ringcast binary not found (tried ${candidates.join(', ')}): build it with ` +
      '`cargo build --release -p ringcast` or set RINGCAST_BIN',
  );
}

const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export { sleep };

/**
 * Starts ringcast on 127.0.0.1 (port 0 unless given) with 2 cores and waits
 * for its --addr-file. `config` is the text of a --config file.
 */
export async function startServer({ args = [], config = null, port = 0 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ringcast-js-'));
  const addrFile = join(dir, 'addr');
  const argv = ['--listen', `127.0.0.1:${port}`, '--addr-file', addrFile, '--cores', '2', '--log', 'warn'];
  if (config != null) {
    const file = join(dir, 'ringcast.toml');
    writeFileSync(file, config);
    argv.push('--config', file);
  }
  argv.push(...args);
  const proc = spawn(binary(), argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(proc);
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-8192);
  });
  const exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  exited.then(() => live.delete(proc));
  let done = false;
  exited.then(() => (done = true));
  const deadline = Date.now() + 30000;
  while (!existsSync(addrFile)) {
    if (done) throw new Error(`ringcast exited before listening: ${stderr}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`ringcast did not listen within 30 s: ${stderr}`);
    }
    await sleep(20);
  }
  const addr = readFileSync(addrFile, 'utf8').trim();
  const boundPort = Number(addr.split(':').pop());
  const server = {
    proc,
    addr,
    port: boundPort,
    url: `ws://${addr}/ws`,
    http: `http://${addr}`,
    exited,
    stderr: () => stderr,
    signal(sig) {
      proc.kill(sig);
    },
    async kill() {
      if (!done) proc.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
    /** Starts a new server on the same port with the same options. */
    restart() {
      return startServer({ args, config, port: boundPort });
    },
  };
  return server;
}

/** Resolves with the first `type` event of `emitter` that passes `pred`. */
export function nextEvent(emitter, type, pred = () => true, timeout = 20000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${timeout} ms`));
    }, timeout);
    const off = emitter.on(type, (ev) => {
      if (!pred(ev)) return;
      clearTimeout(t);
      off();
      resolve(ev);
    });
  });
}

/** Polls `fn` until it returns a truthy value. */
export async function waitFor(fn, what = 'condition', timeout = 20000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** An HS256 JWT. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = createHmac('sha256', secret).update(head).digest('base64url');
  return `${head}.${sig}`;
}

/** A port nothing listens on (bound, then released). */
export async function deadPort() {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}
