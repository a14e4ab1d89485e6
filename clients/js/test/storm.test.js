// The reconnect storm, CI-sized: 600 SDK clients in 2 worker processes lose
// the server to a SIGKILL and get it back on the same port a second later.
// Every client must come back and resubscribe, and the backoff must spread
// them: the busiest 100 ms of retry due-times (what the jitter decides,
// before any event-loop delay) holds well under half of them. A slow machine
// spreads retries further, never less. The full 5,000-client run is
// `node bench/storm.js` (results/reconnect-storm-20261203/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runStorm, peakWindow, percentile } from '../bench/storm.js';

test('storm statistics: nearest-rank percentiles, busiest window', () => {
  assert.equal(percentile([], 50), null);
  assert.equal(percentile([1, 2, 3, 4], 50), 2);
  assert.equal(percentile([1, 2, 3, 4], 100), 4);
  assert.equal(percentile([1, 2, 3, 4], 0), 1);
  assert.deepEqual(peakWindow([0, 50, 99, 100, 250], 100), { count: 3, start: 0 });
  assert.deepEqual(peakWindow([], 100), { count: 0, start: null });
});

test('600 clients dropped at once come back spread out, all resubscribed', async () => {
  const lines = [];
  const r = await runStorm({ clients: 600, workers: 2, timeoutS: 90, log: (l) => lines.push(l) });
  const s = r.summary;
  console.log(r.report);
  assert.equal(s.dropped, 600, 'every client saw the drop');
  assert.equal(s.reconnected, 600, 'every client reconnected');
  assert.equal(s.resubscribed, 600, 'every client resubscribed');
  assert.equal(s.wasRecovering, 600, 'every resubscribe asked to recover (since)');
  assert.equal(s.failed, 0);
  assert.ok(r.ok);
  assert.ok(s.peakWindowDue.count < 300, `retries due in one 100 ms window: ${s.peakWindowDue.count} of 600`);
});
