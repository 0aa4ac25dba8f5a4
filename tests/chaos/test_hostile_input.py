"""A hostile producer against a real worker: anything a producer can put into an entry,
and keys around the queue of the wrong type.

Fields: any names (the known ones among them, duplicated too) with values that
are empty, binary, long, huge, not UTF-8, numbers written every odd way
(padded, signed, exponents, nan/inf, past 2^63 and 2^64, negative zero), and
``reply_to`` streams that are another type, or the queue's own input or
dead-letter stream. Keys: the output and dead-letter streams are replaced by
strings for a while during the run, then restored.

Invariants: every entry gets exactly one result, where its sender looks for it
(its ``reply_to`` stream where that is usable, whatever else is wrong with the
entry, else the output stream) and with its cid where that is usable; every
valid entry among them an ok result; no child process restarts; each error
result has exactly one dead letter.
"""

from __future__ import annotations

import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from report import Row, record, sized

from conftest import keys

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(3600)]

KNOWN = [b"data", b"op", b"cid", b"reply_to", b"deadline_ms"]
junk = st.binary(min_size=0, max_size=64)
NUMBERS = [
    b"0", b"-0", b"+5", b" 5", b"5 ", b"\t5\n", b"1e3", b"1E-3", b"0x10", b"1_000",
    b"nan", b"NaN", b"inf", b"-inf", b"-1", b"3.5", b"9223372036854775807",
    b"9223372036854775808", b"18446744073709551615", b"18446744073709551616",
    b"-9223372036854775809", b"9" * 40, b"\xd9\xa1",  # an Arabic-Indic digit, not ASCII
]  # fmt: skip
value = st.one_of(
    junk,
    st.sampled_from([b"echo", b"sha256", b"vector_add", b"dense", b"nope", b"", b"\xff\xfe"]),
    st.sampled_from(NUMBERS),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.integers(0, 2**64).map(lambda i: b"%d" % (int(time.time() * 1000) + i % 120_000 - 60_000)),
    st.binary(min_size=200, max_size=600),  # larger than a slot's payload
)
# A huge entry now and then; more would fill the server with copies (dead letters).
huge = st.integers(0, sized(50, 2000)).map(lambda k: b"x" * 1_000_000 if k == 0 else b"small")


def reply_name(queue: str) -> st.SearchStrategy[bytes]:
    # Reply streams the test can find again, any bytes after the prefix; and keys that
    # cannot take a result: another type, the queue's own input and dead-letter streams.
    return st.one_of(
        junk.map(lambda tail: f"gpufeed:{{{queue}}}:reply:".encode() + tail),
        st.sampled_from(
            [
                f"gpufeed:{{{queue}}}:{k}".encode()
                for k in ("in", "dead", "a-string", "consumer:testhost")
            ]
        ),
    )


def entries_for(queue: str) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """One entry: (field, value) pairs, names repeating as a producer may repeat them."""
    name = st.one_of(st.sampled_from(KNOWN), junk.filter(bool))
    pair = st.tuples(name, st.one_of(value, huge))
    base = st.lists(pair, min_size=1, max_size=8)
    many = st.lists(st.tuples(junk.filter(bool), junk), min_size=60, max_size=80)
    valid = st.tuples(st.just(b"data"), st.binary(max_size=240)).map(lambda p: [p])
    return st.one_of(
        valid,
        valid,
        base,
        many,
        st.tuples(base, reply_name(queue)).map(lambda t: [*t[0], (b"reply_to", t[1])]),
    )


def answer_for(
    pairs: list[tuple[bytes, bytes]], out: str, unusable: set[bytes]
) -> tuple[bytes, bytes | None]:
    """The stream an entry's result must land on, and the cid it must carry: its own
    where usable, whatever else is wrong with the entry (repeated names: the last)."""
    fields = dict(pairs)
    cid = fields.get(b"cid")
    if cid is not None and (len(cid) > 256 or not is_utf8(cid)):
        cid = None
    reply_to = fields.get(b"reply_to")
    usable = reply_to is not None and 0 < len(reply_to) <= 512 and reply_to not in unusable
    return (reply_to if usable else out.encode()), cid  # type: ignore[return-value]


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def is_plain_valid(fields: list[tuple[bytes, bytes]]) -> bool:
    return len(fields) == 1 and fields[0][0] == b"data" and len(fields[0][1]) <= 240


def test_a_hostile_producer_cannot_break_the_worker(client, queue, start_worker) -> None:
    started = time.monotonic()
    stream, out, dead = keys(queue)
    client.set(f"gpufeed:{{{queue}}}:a-string", b"not a stream")
    worker = start_worker("--max-batch", "64", "--log-format", "json")
    worker.wait_ready(client, stream)
    sent: list[bytes] = []
    valid: set[bytes] = set()
    replies: set[bytes] = set()
    hostile = [0]
    # Where each entry's sender looks for its result, and the cid it matches it by.
    expected: dict[bytes, tuple[bytes, bytes | None]] = {}
    unusable = {stream.encode(), dead.encode(), f"gpufeed:{{{queue}}}:a-string".encode(),
                f"gpufeed:{{{queue}}}:consumer:testhost".encode()}  # fmt: skip

    # Short lists, many examples: Hypothesis draws long lists far more slowly
    # (60-150 entries: 0.14 s an example, against 0.016 s for 1-20).
    @settings(max_examples=sized(60, 10_000), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(entries_for(queue), min_size=1, max_size=20))
    def produce(batch: list[list[tuple[bytes, bytes]]]) -> None:
        pipe = client.pipeline(transaction=False)
        for fields in batch:
            pipe.execute_command("XADD", stream, "*", *[x for pair in fields for x in pair])
            replies.update(v for k, v in fields if k == b"reply_to")
        ids = pipe.execute()
        sent.extend(ids)
        valid.update(i for i, f in zip(ids, batch, strict=True) if is_plain_valid(f))
        expected.update((i, answer_for(f, out, unusable)) for i, f in zip(ids, batch, strict=True))
        hostile[0] += sum(1 for f in batch if not is_plain_valid(f))

    produce()
    half = len(sent)
    for broken in (out, dead):  # results wait while it is broken, then arrive
        sentinel = break_and_restore(client, worker, broken, stream)
        sent.append(sentinel)
        valid.add(sentinel)
        expected[sentinel] = (out.encode(), None)
        produce()
    streams = [out, *(r for r in replies if r not in (stream.encode(), dead.encode()))]
    results = wait_for_every_result(client, worker, stream, streams, timeout_s=sized(300, 1800))
    lost = sum(1 for i in sent if i not in results)
    duplicated = sum(len(r) - 1 for r in results.values())
    errors = sorted(i for i, r in results.items() if r[0][b"status"] == b"error")
    internal = [r[0] for r in results.values() if r[0].get(b"error", b"").startswith(b"internal")]
    dead_srcs = sorted(f[b"src"] for _id, f in read_all(client, dead))
    restarts = worker.events("child died; restarting all children")
    record(Row("hostile producer: any fields and values, keys of the wrong type",
               len(sent), lost, duplicated, time.monotonic() - started,
               f"{hostile[0]:,} hostile; {len(errors)} errors, {len(dead_srcs)} dead letters, "
               f"{len(restarts)} "
               f"restarts; output and dead-letter streams broken and restored "
               f"after {half:,} and {len(sent):,} entries"))  # fmt: skip
    assert hostile[0] >= sized(100, 100_000)
    assert (lost, duplicated) == (0, 0)
    assert all(results[i][0][b"status"] == b"ok" for i in valid), "every valid entry answered"
    assert internal == [], "packing answers every hostile entry itself, crash isolation none"
    matched = {i: (r[0][b"stream"], r[0].get(b"cid")) for i, r in results.items()}
    assert matched == expected, "every result where its sender looks, with its cid"
    assert client.xpending(stream, "gpufeed")["pending"] == 0
    assert dead_srcs == errors  # exactly one dead letter per error
    assert restarts == [] and worker.proc.poll() is None


MISCONFIGURED = "queue misconfigured; results are kept and the commit retried"


# Each swap is one script, so atomic: between a RENAME and a SET (or a DEL and a
# RENAME) the worker's retried commit could create the stream afresh, and the next
# command would overwrite the results it had just written.
BREAK = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
redis.call('SET', KEYS[1], ARGV[1])
"""
RESTORE = """
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1])
else redis.call('DEL', KEYS[1]) end
"""


def break_and_restore(client: redis.Redis, worker, key: str, stream: str) -> bytes:
    """Replace ``key`` by a string until the worker says it is waiting (a valid entry
    sent meanwhile makes it commit), then put the stream back as it was; the entry's id."""
    aside = key + ":aside"
    client.eval(BREAK, 2, key, aside, b"someone's string")
    seen = len(worker.events(MISCONFIGURED))
    sentinel: bytes = client.xadd(stream, {"data": b"sent while " + key.encode() + b" was broken"})
    deadline = time.monotonic() + 60
    while len(worker.events(MISCONFIGURED)) == seen:
        assert time.monotonic() < deadline, "the worker never tried to commit"
        time.sleep(0.2)
    assert client.get(key) == b"someone's string", "the worker wrote nothing over it"
    client.eval(RESTORE, 2, key, aside)
    return sentinel


def read_all(client: redis.Redis, key) -> list:
    """A whole stream, a page at a time: dead letters copy their entries' fields, huge
    ones among them, and one reply of all of them can outlast the socket timeout."""
    entries: list = []
    start = "-"
    while True:
        page = client.xrange(key, min=start, count=500)
        entries += page
        if len(page) < 500:
            return entries
        start = "(" + page[-1][0].decode()


def wait_for_every_result(
    client: redis.Redis, worker, stream: str, streams: list, timeout_s: float
) -> dict[bytes, list[dict[bytes, bytes]]]:
    """Wait until the group has read and acknowledged everything (cheap to ask, unlike
    reading every result again), then read the results once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, f"the worker died:\n{worker.log()[-3000:]}"
        (group,) = client.xinfo_groups(stream)
        if group["lag"] == 0 and group["pending"] == 0:
            break
        time.sleep(0.5)
    time.sleep(0.5)  # a duplicate still on its way would arrive
    results: dict[bytes, list[dict[bytes, bytes]]] = {}
    for key in streams:
        try:
            entries = read_all(client, key)
        except redis.ResponseError:
            continue  # not a stream: nothing was written there
        for _id, f in entries:
            if b"src" in f and b"status" in f:
                name = key.encode() if isinstance(key, str) else key
                results.setdefault(f[b"src"], []).append({**f, b"stream": name})
    return results
