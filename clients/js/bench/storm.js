#!/usr/bin/env node
// Reconnect-storm check: N SDK clients, spread over K Node worker processes,
// all lose their connection at the same instant because the server is killed
// (SIGKILL: a crash; or SIGTERM: a drain with 1001 close frames) and
// restarted on the same port. Full-jitter backoff should spread their
// reconnects over the backoff window instead of landing them all in one
// burst; this measures that: a histogram of the reconnect times, percentiles,
// attempts per client and the busiest 100 ms window.
//
//   node bench/storm.js [--clients 5000] [--workers 4] [--channels 8]
//       [--signal KILL|TERM] [--downtime-ms 1000] [--timeout-s 120]
//       [--out storm.json] [--bucket-ms 250] [--window-ms 100]
//       [--min-delay-ms N] [--max-delay-ms N]   (default: the SDK's 500 / 20000)
//
// The server is $RINGCAST_BIN, else the repository's target/release/ringcast
// (testlib/helpers.js). The text report goes to stdout, progress to stderr;
// the exit status is 1 if any client did not reconnect and resubscribe in
// time, 2 on a setup error.
//
// The same file is the worker (forked with --worker) and a module: the node
// test (test/storm.test.js) calls runStorm() and the summary functions.
//
// Times are Date.now() wall-clock milliseconds, the one clock every process
// on the machine shares; each worker records absolute times and the
// coordinator subtracts the instant just before it signalled the server.

import { fork } from 'node:child_process';
import { realpathSync, writeFileSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Ringcast } from '../index.js';
import { startServer, WebSocket, sleep } from '../testlib/helpers.js';

const SELF = fileURLToPath(import.meta.url);

export const DEFAULTS = {
  clients: 5000,
  workers: 4,
  channels: 8,
  signal: 'SIGKILL',
  downtimeMs: 1000,
  timeoutS: 120,
  out: null,
  bucketMs: 250,
  windowMs: 100,
  minDelayMs: undefined, // undefined: the SDK's default (500)
  maxDelayMs: undefined, // undefined: the SDK's default (20000)
  batch: 100, // connects in flight per worker while ramping up (keeps the accept backlog small)
  log: null, // (line) => void for progress; default: stderr
};

// ---------------------------------------------------------------------------
// Statistics (pure functions, exported for the test).

/** Nearest-rank percentile of an ascending array (p in [0, 100]); null if empty. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  if (p <= 0) return sorted[0];
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/**
 * The most values of `times` in any half-open window [t, t + width): the
 * "storm" measure (without jitter every client would land in one window).
 * Returns { count, start } (start: the earliest value in that window).
 */
export function peakWindow(times, width) {
  const s = [...times].sort((a, b) => a - b);
  let best = { count: 0, start: null };
  // Two pointers over the sorted values: each index enters and leaves once.
  let lo = 0;
  for (let hi = 0; hi < s.length; hi++) {
    while (s[hi] - s[lo] >= width) lo++;
    if (hi - lo + 1 > best.count) best = { count: hi - lo + 1, start: s[lo] };
  }
  return best;
}

/** Counts per bucket [i * width, (i + 1) * width), from 0 to the largest value. */
export function histogram(times, width) {
  if (times.length === 0) return [];
  const max = Math.max(...times);
  const counts = new Array(Math.floor(Math.max(0, max) / width) + 1).fill(0);
  for (const t of times) counts[Math.floor(Math.max(0, t) / width)]++;
  return counts.map((count, i) => ({ from: i * width, to: (i + 1) * width, count }));
}

const PCTS = [0, 10, 50, 90, 99, 100];

function pcts(values) {
  const s = [...values].sort((a, b) => a - b);
  const out = {};
  for (const p of PCTS) out[p === 100 ? 'max' : `p${p}`] = percentile(s, p);
  return out;
}

/** Per-client rows (times relative to the drop) → the report's figures. */
export function summarize(rows, { clients, windowMs = 100, bucketMs = 250 }) {
  const back = rows.filter((r) => r.connectedMs != null);
  const resub = rows.filter((r) => r.subscribedMs != null);
  const connected = back.map((r) => r.connectedMs);
  // When the successful attempt was due by the backoff timer (the time of
  // the failure before it plus its random delay): what the jitter decides,
  // before any event-loop or server latency.
  const due = back.filter((r) => r.dueMs != null).map((r) => r.dueMs);
  const attempts = rows.map((r) => r.attempts);
  const attemptCounts = {};
  for (const a of attempts) attemptCounts[a] = (attemptCounts[a] || 0) + 1;
  const codes = {};
  for (const r of rows) if (r.downCode != null) codes[r.downCode] = (codes[r.downCode] || 0) + 1;
  const peak = peakWindow(connected, windowMs);
  const peakDue = peakWindow(due, windowMs);
  return {
    clients,
    reported: rows.length,
    dropped: rows.filter((r) => r.downMs != null).length,
    reconnected: back.length,
    resubscribed: resub.length,
    failed: clients - Math.min(back.length, resub.length),
    notReconnected: clients - back.length,
    notResubscribed: clients - resub.length,
    closeCodes: codes,
    lostAgain: rows.filter((r) => r.redrops > 0).length,
    wasRecovering: resub.filter((r) => r.wasRecovering).length,
    recovered: resub.filter((r) => r.recovered).length,
    reconnectMs: pcts(connected),
    resubscribeMs: pcts(resub.map((r) => r.subscribedMs)),
    ackAfterWelcomeMs: pcts(resub.filter((r) => r.connectedMs != null).map((r) => r.subscribedMs - r.connectedMs)),
    timerLatenessMs: pcts(back.filter((r) => r.dueMs != null && r.attemptMs != null).map((r) => r.attemptMs - r.dueMs)),
    attempts: {
      mean: attempts.length ? attempts.reduce((a, b) => a + b, 0) / attempts.length : null,
      max: attempts.length ? Math.max(...attempts) : null,
      total: attempts.reduce((a, b) => a + b, 0),
      distribution: attemptCounts,
    },
    windowMs,
    peakWindow: { ...peak, fraction: clients ? peak.count / clients : null },
    peakWindowDue: { ...peakDue, fraction: clients ? peakDue.count / clients : null },
    bucketMs,
    histogram: histogram(connected, bucketMs),
  };
}

/** The text report: histogram of reconnect times and the figures. */
export function formatReport(summary, timeline = {}, meta = {}) {
  const s = summary;
  const out = [];
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const ms = (v) => (v == null ? '-' : `${v}`);
  const line = (o) => PCTS.map((p) => `${p === 100 ? 'max' : 'p' + p} ${ms(o[p === 100 ? 'max' : 'p' + p])}`).join('  ');
  out.push(
    `reconnect storm: ${s.clients} clients in ${meta.workers ?? '?'} worker processes, server ${meta.signal ?? '?'}, ` +
      `downtime ${meta.downtimeMs ?? '?'} ms, backoff ${meta.minDelayMs ?? 500}..${meta.maxDelayMs ?? 20000} ms (full jitter)`,
  );
  if (timeline.exitedMs != null) {
    out.push(
      `timeline (ms after the drop): server exited +${timeline.exitedMs}, restart spawned +${timeline.restartMs}, ` +
        `listening again +${timeline.listeningMs}; all back +${ms(s.reconnectMs.max)}`,
    );
  }
  out.push(
    `dropped ${s.dropped}/${s.clients} (close codes ${JSON.stringify(s.closeCodes)}); reconnected ${s.reconnected}/${s.clients}; ` +
      `resubscribed ${s.resubscribed}/${s.clients} (with since: ${s.wasRecovering}, recovered: ${s.recovered}); ` +
      `lost again after reconnecting: ${s.lostAgain}`,
  );
  out.push('');
  out.push(`reconnect times (first welcome after the drop), ms after the drop, ${s.bucketMs} ms buckets:`);
  const peakBucket = Math.max(1, ...s.histogram.map((b) => b.count));
  const width = 50;
  const wFrom = String(s.histogram.length ? s.histogram[s.histogram.length - 1].to : 0).length;
  for (const b of s.histogram) {
    const bar = '#'.repeat(Math.round((b.count / peakBucket) * width));
    const mark =
      timeline.listeningMs != null && timeline.listeningMs >= b.from && timeline.listeningMs < b.to ? '  <- server listening again' : '';
    out.push(
      `  ${String(b.from).padStart(wFrom)}-${String(b.to).padStart(wFrom)} | ${bar.padEnd(width)} ${String(b.count).padStart(5)}${mark}`,
    );
  }
  out.push('');
  out.push(`reconnect (welcome) ms:      ${line(s.reconnectMs)}`);
  out.push(`resubscribed (ack) ms:       ${line(s.resubscribeMs)}`);
  out.push(`ack after welcome ms:        ${line(s.ackAfterWelcomeMs)}`);
  out.push(`backoff timer lateness ms:   ${line(s.timerLatenessMs)}`);
  const dist = Object.entries(s.attempts.distribution)
    .sort((a, b) => a[0] - b[0])
    .map(([k, v]) => `${k}:${v}`)
    .join(' ');
  out.push(
    `attempts per client:         mean ${s.attempts.mean == null ? '-' : s.attempts.mean.toFixed(2)}  max ${ms(s.attempts.max)}  ` +
      `total ${s.attempts.total}  (attempts:clients ${dist})`,
  );
  const pw = (w) => (w.count ? `${w.count} of ${s.clients} (${pct(w.fraction)}) at +${w.start}..+${w.start + s.windowMs} ms` : '-');
  out.push(`peak ${s.windowMs} ms window (welcomes):       ${pw(s.peakWindow)}`);
  out.push(`peak ${s.windowMs} ms window (attempts due):   ${pw(s.peakWindowDue)}`);
  out.push(`  (without jitter all ${s.clients} would retry in the same window)`);
  if (s.failed > 0) {
    out.push(`FAILED: ${s.notReconnected} clients did not reconnect, ${s.notResubscribed} did not resubscribe in time`);
  }
  return out.join('\n');
}

// ---------------------------------------------------------------------------
// Coordinator.

function split(n, k) {
  const out = [];
  for (let i = 0; i < k; i++) out.push(Math.floor(n / k) + (i < n % k ? 1 : 0));
  return out;
}

function clientOptions(o) {
  const c = {};
  if (o.minDelayMs != null) c.minReconnectDelay = o.minDelayMs;
  if (o.maxDelayMs != null) c.maxReconnectDelay = o.maxDelayMs;
  return c;
}

/** The server's arguments beyond helpers.startServer's listen/cores/log. */
function serverArgs() {
  // --max-connections 0 (also the default): no cap but the descriptor limit,
  // so the server does not answer 503 to some of the N clients (a nonzero
  // cap is split per core, and SO_REUSEPORT does not split connections
  // exactly evenly). The default backlog (4096 per core) and handshake
  // timeout (10 s) hold the ramp-up's `batch` connects per worker.
  return ['--max-connections', '0'];
}

/** One forked worker: its process, its latest progress and a reply queue. */
function startWorker(index, first, count, bus) {
  // execArgv: [] so a worker forked from `node --test` is not a test runner.
  const child = fork(SELF, ['--worker'], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const w = { index, first, count, child, progress: { ready: 0, back: 0, resubscribed: 0 }, replies: new Map(), dead: null };
  child.on('message', (msg) => {
    if (msg.type === 'progress') {
      w.progress = msg;
      bus.emit('progress');
    } else if (msg.type === 'error') {
      w.dead = `worker ${index}: ${msg.message}`;
      bus.emit('progress');
    }
    const waiter = w.replies.get(msg.type);
    if (waiter) {
      w.replies.delete(msg.type);
      waiter(msg);
    }
  });
  child.on('exit', (code, signal) => {
    if (!w.dead) w.dead = `worker ${index} exited (${signal || code})`;
    bus.emit('progress');
  });
  return w;
}

/** Sends `msg` to worker `w` and waits for its `replyType` message (bounded). */
function ask(w, msg, replyType, timeoutMs) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      w.replies.delete(replyType);
      reject(new Error(`worker ${w.index}: no ${replyType} within ${timeoutMs} ms`));
    }, timeoutMs);
    w.replies.set(replyType, (reply) => {
      clearTimeout(t);
      resolve(reply);
    });
    w.child.send(msg);
  });
}

/**
 * Waits until `done()` holds, re-checked on every progress message (no
 * polling), printing `status()` once a second. Resolves true, or false at
 * the deadline; rejects if a worker died.
 */
function waitProgress(bus, workers, done, status, deadline, log) {
  return new Promise((resolve, reject) => {
    const finish = (err, ok) => {
      clearInterval(tick);
      clearTimeout(timer);
      bus.off('progress', check);
      if (err) reject(err);
      else resolve(ok);
    };
    const check = () => {
      const dead = workers.find((w) => w.dead);
      if (dead) finish(new Error(dead.dead));
      else if (done()) finish(null, true);
    };
    const tick = setInterval(() => log(status()), 1000);
    const timer = setTimeout(() => finish(null, false), Math.max(0, deadline - Date.now()));
    bus.on('progress', check);
    check();
  });
}

const liveWorkers = new Set();
process.on('exit', () => {
  for (const w of liveWorkers) {
    try {
      w.child.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/**
 * Runs one storm and returns { ok, summary, timeline, rows, meta, report }.
 * Throws on a setup failure (no binary, a worker died, clients could not
 * all connect before the drop within the timeout).
 */
export async function runStorm(options = {}) {
  const o = { ...DEFAULTS };
  for (const [k, v] of Object.entries(options)) if (v !== undefined) o[k] = v;
  const signal = String(o.signal).toUpperCase().replace(/^(SIG)?/, 'SIG');
  if (signal !== 'SIGKILL' && signal !== 'SIGTERM') throw new Error(`--signal: KILL or TERM, not ${o.signal}`);
  const log = o.log || ((line) => process.stderr.write(`${line}\n`));
  const N = o.clients;
  const K = Math.max(1, Math.min(o.workers, N));
  const timeoutMs = o.timeoutS * 1000;
  const bus = new EventEmitter();
  const workers = [];
  let server = null;
  const sum = (f) => workers.reduce((a, w) => a + f(w.progress), 0);
  try {
    server = await startServer({ args: serverArgs() });
    log(`server ${server.addr} pid ${server.proc.pid}; ${N} clients over ${K} workers, ${o.channels} channels`);

    // Phase 1: every client connected and subscribed.
    const sizes = split(N, K);
    let first = 0;
    for (let i = 0; i < K; i++) {
      const w = startWorker(i, first, sizes[i], bus);
      workers.push(w);
      liveWorkers.add(w);
      w.child.send({
        type: 'start',
        url: server.url,
        first,
        count: sizes[i],
        channels: o.channels,
        batch: o.batch,
        options: clientOptions(o),
      });
      first += sizes[i];
    }
    const t0 = Date.now();
    const allReady = await waitProgress(
      bus,
      workers,
      () => sum((p) => p.ready) === N,
      () => `connected ${sum((p) => p.ready)}/${N}`,
      t0 + timeoutMs,
      log,
    );
    if (!allReady) throw new Error(`only ${sum((p) => p.ready)}/${N} clients connected and subscribed within ${o.timeoutS} s`);
    log(`connected ${N}/${N} (and subscribed) in ${Date.now() - t0} ms`);

    // Phase 2: arm the recorders, then drop everyone at once.
    await Promise.all(workers.map((w) => ask(w, { type: 'arm' }, 'armed', 10000)));
    const tDrop = Date.now();
    const timeline = {};
    const deadline = tDrop + timeoutMs;
    const backStatus = () =>
      `back ${sum((p) => p.back)}/${N}, resubscribed ${sum((p) => p.resubscribed)}/${N} at +${Date.now() - tDrop} ms`;
    // Progress keeps printing while the server is down and restarting.
    const allBack = waitProgress(bus, workers, () => sum((p) => p.resubscribed) === N, backStatus, deadline, log);
    allBack.catch(() => {}); // awaited below; a worker death must not be unhandled meanwhile
    if (signal === 'SIGKILL') {
      await server.kill(); // SIGKILL, then waits for the exit
    } else {
      // SIGTERM drains: 1001 close frames, then up to --shutdown-grace (5 s)
      // for the close handshakes. Bounded: SIGKILL after 30 s.
      server.signal('SIGTERM');
      const t = setTimeout(() => server.proc.kill('SIGKILL'), 30000);
      await server.exited;
      clearTimeout(t);
      await server.kill(); // already exited: removes its temp dir
    }
    timeline.exitedMs = Date.now() - tDrop;
    // Downtime counts from the drop; the port is free once the old process
    // is gone (a draining server still holds it).
    await sleep(Math.max(0, tDrop + o.downtimeMs - Date.now()));
    timeline.restartMs = Date.now() - tDrop;
    server = await server.restart();
    timeline.listeningMs = Date.now() - tDrop;
    log(`server restarted: pid ${server.proc.pid} listening at +${timeline.listeningMs} ms`);

    // Phase 3: wait for everyone to be back (or the deadline), then collect.
    const ok = await allBack;
    log(ok ? `all ${N} back: ${backStatus()}` : `timeout: ${backStatus()}`);
    const reports = await Promise.all(workers.map((w) => ask(w, { type: 'report' }, 'report', 30000)));
    const rows = [];
    for (const rep of reports) {
      for (const r of rep.rows) {
        const rel = (t) => (t == null ? null : t - tDrop);
        rows.push({
          id: r.id,
          worker: rep.worker,
          channel: r.channel,
          downMs: rel(r.down),
          downCode: r.code,
          attempts: r.attempts,
          dueMs: rel(r.attemptDue),
          attemptMs: rel(r.attemptAt),
          connectedMs: rel(r.connected),
          subscribedMs: rel(r.subscribed),
          wasRecovering: r.wasRecovering,
          recovered: r.recovered,
          redrops: r.redrops,
        });
      }
    }
    rows.sort((a, b) => a.id - b.id);
    const summary = summarize(rows, { clients: N, windowMs: o.windowMs, bucketMs: o.bucketMs });
    const meta = {
      clients: N,
      workers: K,
      channels: o.channels,
      signal,
      downtimeMs: o.downtimeMs,
      timeoutS: o.timeoutS,
      minDelayMs: o.minDelayMs ?? 500,
      maxDelayMs: o.maxDelayMs ?? 20000,
      node: process.version,
      nproc: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
      kernel: os.release(),
      date: new Date(tDrop).toISOString(),
    };
    const report = formatReport(summary, timeline, meta);
    const result = { ok: summary.failed === 0, summary, timeline, rows, meta, report };
    if (o.out) writeFileSync(o.out, toJson(result));
    return result;
  } finally {
    // Workers first (their clients would otherwise keep retrying), then the server.
    await Promise.all(workers.map((w) => stopWorker(w)));
    if (server) await server.kill();
  }
}

/** Asks a worker to exit; SIGKILL if it has not within 2 s. */
async function stopWorker(w) {
  if (w.child.exitCode == null && w.child.signalCode == null) {
    const exited = new Promise((r) => w.child.once('exit', r));
    try {
      w.child.send({ type: 'exit' });
    } catch {
      /* channel already closed */
    }
    const t = setTimeout(() => w.child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(t);
  }
  liveWorkers.delete(w);
}

const FIELDS = ['id', 'worker', 'channel', 'downMs', 'downCode', 'attempts', 'dueMs', 'attemptMs', 'connectedMs', 'subscribedMs', 'wasRecovering', 'recovered', 'redrops'];

/** The JSON file: meta, timeline, summary, and one row per client (columns in `fields`). */
function toJson({ ok, summary, timeline, rows, meta }) {
  const head = JSON.stringify({ ok, meta, timeline, summary, fields: FIELDS }, null, 2);
  const body = rows.map((r) => JSON.stringify(FIELDS.map((f) => r[f]))).join(',\n    ');
  return `${head.slice(0, -2)},\n  "rows": [\n    ${body}\n  ]\n}\n`;
}

// ---------------------------------------------------------------------------
// Worker: holds `count` clients; records, per client, what happens after
// 'arm'. Times are absolute Date.now().

function workerMain() {
  const records = [];
  let armed = false;
  let count = 0;
  let ready = 0;
  let back = 0;
  let resubscribed = 0;
  let lastSent = '';
  const progress = (force) => {
    const msg = { type: 'progress', ready, back, resubscribed };
    const key = `${ready}/${back}/${resubscribed}`;
    if (!force && key === lastSent) return;
    lastSent = key;
    process.send(msg);
  };
  // Coalesced progress: at most every 200 ms, plus at once when a phase is complete.
  const ticker = setInterval(() => progress(false), 200);
  process.on('disconnect', () => process.exit(0)); // the coordinator is gone

  function track(rc, sub, r) {
    rc.on('state', (s) => {
      if (!armed) return;
      const t = Date.now();
      if (s.state === 'disconnected') {
        if (r.down == null) {
          r.down = t;
          r.code = s.code ?? null;
        } else if (r.connected != null) {
          r.redrops++;
        }
        // The next attempt is due at t + delay: the jitter's choice.
        r.nextDue = t + s.delay;
      } else if (s.state === 'connecting') {
        if (r.connected == null) {
          r.attempts++;
          r.attemptAt = t;
          r.attemptDue = r.nextDue;
        }
      } else if (s.state === 'connected') {
        if (r.connected == null && r.down != null) {
          r.connected = t;
          back++;
        }
      }
    });
    sub.on('subscribed', (info) => {
      if (!armed || r.connected == null || r.subscribed != null) return;
      r.subscribed = Date.now();
      r.wasRecovering = info.wasRecovering;
      r.recovered = info.recovered;
      resubscribed++;
      if (resubscribed === count) progress(true);
    });
  }

  async function start(msg) {
    count = msg.count;
    const open = async (id) => {
      const channel = `storm:${id % msg.channels}`;
      const rc = new Ringcast(msg.url, { WebSocket, ...msg.options });
      const r = { id, channel, down: null, code: null, attempts: 0, nextDue: null, attemptDue: null, attemptAt: null, connected: null, subscribed: null, wasRecovering: null, recovered: null, redrops: 0 };
      const sub = rc.subscribe(channel, { recover: true });
      track(rc, sub, r);
      records.push(r);
      await rc.connect();
      await sub.ready;
      // The first client of each channel publishes once, so every
      // subscription holds a real position and resubscribes with `since`.
      if (id < msg.channels) await rc.publish(channel, { storm: id });
      ready++;
    };
    // Ramp up `batch` at a time (bounded: count / batch rounds; each connect
    // retries by itself and the coordinator's timeout bounds the whole).
    for (let i = 0; i < count; i += msg.batch) {
      const ids = [];
      for (let j = i; j < Math.min(count, i + msg.batch); j++) ids.push(msg.first + j);
      await Promise.all(ids.map(open));
    }
    progress(true);
  }

  process.on('message', (msg) => {
    if (msg.type === 'start') {
      start(msg).catch((err) => process.send({ type: 'error', message: String((err && err.stack) || err) }));
    } else if (msg.type === 'arm') {
      armed = true;
      process.send({ type: 'armed' });
    } else if (msg.type === 'report') {
      process.send({
        type: 'report',
        worker: process.pid,
        rows: records.map(({ nextDue, ...r }) => r),
      });
    } else if (msg.type === 'exit') {
      clearInterval(ticker);
      // Sockets close with the process; a clean close of every client is not needed.
      process.exit(0);
    }
  });
}

// ---------------------------------------------------------------------------
// Command line.

const FLAGS = {
  '--clients': ['clients', Number],
  '--workers': ['workers', Number],
  '--channels': ['channels', Number],
  '--signal': ['signal', String],
  '--downtime-ms': ['downtimeMs', Number],
  '--timeout-s': ['timeoutS', Number],
  '--out': ['out', String],
  '--bucket-ms': ['bucketMs', Number],
  '--window-ms': ['windowMs', Number],
  '--min-delay-ms': ['minDelayMs', Number],
  '--max-delay-ms': ['maxDelayMs', Number],
  '--batch': ['batch', Number],
};

export function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const spec = FLAGS[argv[i]];
    if (!spec) throw new Error(`unknown argument ${argv[i]} (flags: ${Object.keys(FLAGS).join(' ')})`);
    const v = argv[++i];
    if (v === undefined) throw new Error(`${argv[i - 1]} needs a value`);
    const parsed = spec[1](v);
    if (spec[1] === Number && !(Number.isFinite(parsed) && parsed >= 0)) throw new Error(`${argv[i - 1]}: not a number: ${v}`);
    o[spec[0]] = parsed;
  }
  return o;
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`storm: ${err.message}\n`);
    process.exit(2);
  }
  // Ctrl-C: exit through process.exit so the exit hooks kill the server and workers.
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));
  try {
    const res = await runStorm(opts);
    process.stdout.write(`${res.report}\n`);
    if (opts.out) process.stderr.write(`wrote ${opts.out}\n`);
    process.exit(res.ok ? 0 : 1);
  } catch (err) {
    process.stderr.write(`storm: ${(err && err.stack) || err}\n`);
    process.exit(2);
  }
}

const entry = process.argv[1] ? pathToFileURL(realpathSync(process.argv[1])).href : null;
if (entry === import.meta.url) {
  if (process.argv[2] === '--worker') workerMain();
  else main();
}
