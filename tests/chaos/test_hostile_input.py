"""A hostile producer: random field sets, binary junk, huge entries, unknown ops.

Invariants: the worker never crashes; every entry gets exactly one result (ok
or error); every error result has exactly one dead letter.
"""

from __future__ import annotations

import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from report import Row, record, sized

from conftest import keys

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

KNOWN = [b"data", b"op", b"cid", b"reply_to", b"deadline_ms"]
junk = st.binary(min_size=0, max_size=64)
value = st.one_of(
    junk,
    st.sampled_from([b"echo", b"sha256", b"vector_add", b"dense", b"nope", b"", b"\xff\xfe"]),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.binary(min_size=200, max_size=600),  # larger than a slot's payload
    st.just(b"x" * 1_000_000),  # a huge entry
)


def reply_name(queue: str) -> st.SearchStrategy[bytes]:
    # Reply streams the test can find again; any bytes after the prefix.
    return junk.map(lambda tail: f"gpufeed:{{{queue}}}:reply:".encode() + tail)


def fields_for(queue: str) -> st.SearchStrategy[dict[bytes, bytes]]:
    name = st.one_of(st.sampled_from(KNOWN), junk.filter(bool))
    base = st.dictionaries(name, value, min_size=1, max_size=8)
    many = st.dictionaries(junk.filter(bool), junk, min_size=60, max_size=80)  # too many fields
    valid = st.fixed_dictionaries({b"data": st.binary(max_size=240)})
    return st.one_of(
        valid,
        base,
        many,
        st.tuples(base, reply_name(queue)).map(lambda t: {**t[0], b"reply_to": t[1]}),
    )


def test_a_hostile_producer_cannot_break_the_worker(client, queue, start_worker) -> None:
    started = time.monotonic()
    worker = start_worker("--max-batch", "64")
    worker.wait_ready(client, keys(queue)[0])
    stream, out, dead = keys(queue)
    sent: list[bytes] = []
    replies: set[bytes] = set()

    @settings(max_examples=sized(60, 600), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(fields_for(queue), min_size=1, max_size=20))
    def produce(batch: list[dict[bytes, bytes]]) -> None:
        pipe = client.pipeline(transaction=False)
        for fields in batch:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
            if b"reply_to" in fields and len(fields) <= 64:
                replies.add(fields[b"reply_to"])
        sent.extend(pipe.execute())

    produce()
    results: dict[bytes, list[dict[bytes, bytes]]] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, f"the worker died:\n{worker.log()[-3000:]}"
        results = {}
        for key in [out, *replies]:
            try:
                entries = client.xrange(key)
            except redis.ResponseError:
                continue
            for _id, f in entries:
                results.setdefault(f[b"src"], []).append(f)
        if len(results) >= len(set(sent)):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    lost = sum(1 for i in sent if i not in results)
    duplicated = sum(len(r) - 1 for r in results.values())
    errors = {i for i, r in results.items() if r[0][b"status"] == b"error"}
    dead_srcs = [f[b"src"] for _id, f in client.xrange(dead)]
    record(Row("hostile producer: random fields, junk, huge entries, unknown ops",
               len(sent), lost, duplicated, time.monotonic() - started,
               f"{len(errors)} errors, {len(dead_srcs)} dead letters"))  # fmt: skip
    assert (lost, duplicated) == (0, 0)
    assert sorted(dead_srcs) == sorted(errors)  # exactly one dead letter per error
    assert worker.proc.poll() is None
    assert "child died" not in worker.log()
