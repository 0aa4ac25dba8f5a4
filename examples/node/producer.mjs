// Send vector_add and sha256 messages to a gpufeed queue and read the results back.
//
//   npm ci
//   REDIS_URL=redis://127.0.0.1:6379/0 node producer.mjs [queue]
//
// Each message carries a cid (our correlation id) and a reply_to stream, so
// this producer reads only its own results. The reply stream shares the
// queue's {hash tag}, which Redis Cluster requires. One JSON line is printed per
// result: {"cid", "op", "status", "data_hex", "ok"} where ok says whether the
// result equals what this script computed locally.
import { createHash, randomBytes } from 'node:crypto';
import { commandOptions, createClient } from 'redis';

const queue = process.argv[2] ?? 'default';
const input = `gpufeed:{${queue}}:in`;
const replyTo = process.env.REPLY_TO ?? `gpufeed:{${queue}}:reply:node-${process.pid}`;
const timeoutMs = Number(process.env.TIMEOUT_MS ?? 30000);

// vector_add: two float32 vectors of k elements, little-endian, a then b.
function vectorAdd(a, b) {
  const data = Buffer.alloc(8 * a.length);
  a.forEach((x, i) => data.writeFloatLE(x, 4 * i));
  b.forEach((x, i) => data.writeFloatLE(x, 4 * (a.length + i)));
  const expected = Buffer.alloc(4 * a.length);
  // Math.fround: the sum rounded to float32, as the worker computes it.
  a.forEach((x, i) => expected.writeFloatLE(Math.fround(Math.fround(x) + Math.fround(b[i])), 4 * i));
  return { op: 'vector_add', data, expected };
}

function sha256(data) {
  return { op: 'sha256', data, expected: createHash('sha256').update(data).digest() };
}

const messages = [
  vectorAdd([1, 2, 3], [0.5, 0.5, 0.5]),
  vectorAdd(Array.from({ length: 16 }, (_, i) => i / 3), Array.from({ length: 16 }, (_, i) => -i)),
  sha256(Buffer.from('abc')),
  sha256(randomBytes(200)),
];

const client = createClient({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/0' });
client.on('error', (err) => console.error('redis error:', err.message));
await client.connect();

const byCid = new Map();
for (const [i, m] of messages.entries()) {
  const cid = `node-${process.pid}-${i}`;
  byCid.set(cid, m);
  await client.xAdd(input, '*', { data: m.data, op: m.op, cid, reply_to: replyTo });
}

let lastId = '0';
let failed = 0;
const deadline = Date.now() + timeoutMs;
while (byCid.size > 0 && Date.now() < deadline) {
  const reply = await client.xRead(
    commandOptions({ returnBuffers: true }),
    { key: replyTo, id: lastId },
    { COUNT: 100, BLOCK: 1000 },
  );
  for (const stream of reply ?? []) {
    for (const { id, message } of stream.messages) {
      lastId = id.toString();
      const cid = message.cid?.toString();
      const sent = byCid.get(cid);
      if (!sent) continue;
      byCid.delete(cid);
      const status = message.status.toString();
      const data = message.data ?? message.error;
      const ok = status === 'ok' && Buffer.compare(data, sent.expected) === 0;
      if (!ok) failed += 1;
      console.log(JSON.stringify({ cid, op: sent.op, status, data_hex: data.toString('hex'), ok }));
    }
  }
}
await client.del(replyTo);
await client.quit();
if (byCid.size > 0) {
  console.error(`no result for ${byCid.size} messages after ${timeoutMs} ms: is a worker running?`);
  process.exit(2);
}
process.exit(failed ? 1 : 0);
