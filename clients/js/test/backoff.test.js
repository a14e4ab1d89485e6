// Reconnect delays measured for real: 50 failed connections to a port
// nothing listens on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Ringcast } from '../index.js';
import { WebSocket, waitFor, deadPort } from '../testlib/helpers.js';

test('50 real reconnects: full-jitter delays, spread over [0, cap), and the waits honour them', async () => {
  const port = await deadPort();
  const MIN = 20;
  const MAX = 200;
  const attempts = [];
  class Timed extends WebSocket {
    constructor(...args) {
      super(...args);
      attempts.push(performance.now());
    }
  }
  const rc = new Ringcast(`ws://127.0.0.1:${port}/ws`, { WebSocket: Timed, minReconnectDelay: MIN, maxReconnectDelay: MAX });
  const delays = [];
  rc.on('state', (s) => s.state === 'disconnected' && delays.push(s.delay));
  rc.connect();
  await waitFor(() => attempts.length >= 51, '51 attempts', 60000);
  rc.close();
  const n = 50;
  delays.length = n;
  // Every scheduled delay lies in [0, min(MAX, MIN * 2^attempt)).
  delays.forEach((d, i) => {
    const cap = Math.min(MAX, MIN * 2 ** i);
    assert.ok(d >= 0 && d < cap, `delay ${i} = ${d} outside [0, ${cap})`);
  });
  // The real gaps between attempts are at least the delays (timers never fire early, ~1 ms rounding).
  const gaps = attempts.slice(1, n + 1).map((t, i) => t - attempts[i]);
  gaps.forEach((g, i) => assert.ok(g >= delays[i] - 2, `gap ${i} = ${g} < delay ${delays[i]}`));
  // Spread: once capped (attempt >= 4), 46 uniform draws from [0, 200) cover
  // most of the range; a fixed or barely jittered delay would not.
  const capped = delays.slice(4);
  const spread = Math.max(...capped) - Math.min(...capped);
  assert.ok(spread > MAX / 2, `delays spread over only ${spread} ms: ${capped}`);
  const low = capped.filter((d) => d < MAX / 2).length;
  assert.ok(low > 5 && low < capped.length - 5, `${low} of ${capped.length} delays below ${MAX / 2}`);
  const cappedGaps = gaps.slice(4);
  const gapSpread = Math.max(...cappedGaps) - Math.min(...cappedGaps);
  assert.ok(gapSpread > MAX / 2, `measured gaps spread over only ${gapSpread} ms`);
  console.log(
    `delays (ms) min ${Math.min(...capped)} max ${Math.max(...capped)}; ` +
      `measured gaps min ${Math.min(...cappedGaps).toFixed(1)} max ${Math.max(...cappedGaps).toFixed(1)}`,
  );
});
