// Channels on the real server (2 cores): subscribe/publish/offsets, history,
// presence, join/leave.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Ringcast } from '../index.js';
import { startServer, WebSocket, nextEvent, waitFor } from '../testlib/helpers.js';

const CONFIG = `
[[channels]]
pattern = "chat:*"
history_size = 500
presence = true
join_leave = true
`;

let server;
const clients = [];
before(async () => {
  server = await startServer({ config: CONFIG });
});
after(async () => {
  for (const rc of clients) rc.close();
  await server.kill();
});

async function client(options = {}) {
  const rc = new Ringcast(server.url, { WebSocket, ...options });
  clients.push(rc);
  await rc.connect();
  return rc;
}

/** Two clients held by different cores. */
async function twoCores() {
  const a = await client();
  for (let i = 0; i < 64; i++) {
    const b = await client();
    if (b.core !== a.core) return [a, b];
    b.close();
  }
  throw new Error('every connection landed on one core');
}

test('two clients on two cores see every publication once, in one offset order', async () => {
  const [a, b] = await twoCores();
  assert.notEqual(a.core, b.core);
  const channel = 'room:order';
  const subA = a.subscribe(channel);
  const subB = b.subscribe(channel);
  const [ra, rb] = await Promise.all([subA.ready, subB.ready]);
  assert.equal(ra.offset, 0);
  assert.equal(rb.epoch, ra.epoch);
  const gotA = [];
  const gotB = [];
  subA.on('message', (m) => gotA.push(m));
  subB.on('message', (m) => gotB.push(m));
  const N = 100;
  const acks = await Promise.all(
    Array.from({ length: N }, (_, i) => (i % 2 ? b : a).publish(channel, { from: i % 2 ? 'b' : 'a', i })),
  );
  const offsets = acks.map((x) => x.offset).sort((x, y) => x - y);
  assert.deepEqual(offsets, Array.from({ length: N }, (_, i) => i + 1));
  assert.ok(acks.every((x) => x.epoch === ra.epoch));
  await waitFor(() => gotA.length >= N && gotB.length >= N, `${N} messages each`);
  const order = (got) => got.map((m) => m.offset);
  assert.deepEqual(order(gotA), offsets);
  assert.deepEqual(order(gotB), offsets);
  assert.deepEqual(gotA.map((m) => m.payload), gotB.map((m) => m.payload));
  // Each publisher's messages keep its own order; acks name their offsets.
  for (const who of ['a', 'b']) {
    const seq = gotA.filter((m) => m.payload.from === who).map((m) => m.payload.i);
    assert.deepEqual(seq, [...seq].sort((x, y) => x - y));
  }
  acks.forEach((ack, i) => assert.equal(gotA.find((m) => m.offset === ack.offset).payload.i, i));
  assert.equal(subA.offset, N);
});

test('history: the newest page (oldest first), pages with since, epoch_mismatch', async () => {
  const rc = await client();
  const channel = 'chat:history';
  const acks = [];
  for (let i = 1; i <= 5; i++) acks.push(await rc.publish(channel, { n: i }));
  assert.deepEqual(acks.map((a) => a.offset), [1, 2, 3, 4, 5]);
  const h = await rc.history(channel, { limit: 3 });
  assert.equal(h.offset, 5);
  assert.equal(h.epoch, acks[0].epoch);
  assert.deepEqual(h.publications, [
    { offset: 3, payload: { n: 3 } },
    { offset: 4, payload: { n: 4 } },
    { offset: 5, payload: { n: 5 } },
  ]);
  const page = await rc.history(channel, { limit: 2, since: { offset: 1, epoch: h.epoch } });
  assert.deepEqual(page.publications.map((p) => p.offset), [2, 3]);
  const all = await rc.history(channel);
  assert.equal(all.publications.length, 5);
  await assert.rejects(rc.history(channel, { since: { offset: 1, epoch: '0000000000000000' } }), {
    code: 'epoch_mismatch',
  });
});

test('presence and join/leave', async () => {
  const channel = 'chat:lobby';
  const a = await client();
  const subA = a.subscribe(channel, { presence: true, joinLeave: true });
  const ready = await subA.ready;
  assert.deepEqual(ready.presence, { count: 1, clients: [{ client: a.client, user: null }] });
  const joins = [];
  const leaves = [];
  subA.on('join', (j) => joins.push(j));
  subA.on('leave', (l) => leaves.push(l));

  const b = await client();
  const joined = nextEvent(subA, 'join', (j) => j.client === b.client);
  const subB = b.subscribe(channel, { joinLeave: true });
  await subB.ready;
  const j = await joined;
  assert.deepEqual(j, { type: 'join', channel, client: b.client, user: null });

  const p = await b.presence(channel);
  assert.equal(p.count, 2);
  assert.deepEqual(p.clients.map((c) => c.client).sort(), [a.client, b.client].sort());

  const c = await client();
  const cJoined = nextEvent(subB, 'join', (x) => x.client === c.client);
  c.subscribe(channel);
  await cJoined; // b asked for join_leave too
  const cLeft = nextEvent(subA, 'leave', (x) => x.client === c.client);
  await c.getSubscription(channel).unsubscribe();
  await cLeft;

  const bLeft = nextEvent(subA, 'leave', (x) => x.client === b.client);
  b.close(); // closing counts as leaving
  assert.deepEqual(await bLeft, { type: 'leave', channel, client: b.client, user: null });
  await waitFor(async () => (await a.presence(channel)).count === 1, 'presence back to 1');
  assert.deepEqual(joins.map((x) => x.client), [b.client, c.client]);
  assert.deepEqual(leaves.map((x) => x.client), [c.client, b.client]);
  assert.ok(!joins.some((x) => x.client === a.client)); // never about itself
});
