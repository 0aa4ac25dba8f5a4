"""Packing: XREADGROUP replies → slots → results → result entries."""

from __future__ import annotations

import hashlib
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufeed.connect import cluster_reply_check
from gpufeed.errors import InternalError, ResultOutOfOrder
from gpufeed.gpu import cpu
from gpufeed.ops import Dense, OpTable, default_dense_model
from gpufeed.packing import (
    Columns,
    ResultEntry,
    Results,
    collect_results,
    headers,
    pack,
    payload_capacity,
    plain_columns,
    reply_entries,
    unpack_results,
    write_error_results,
)
from gpufeed.packing.ids import id_ms, id_range, ids_ms

SLOT_SIZES = [64, 128, 256, 1024]


def table_for(slot_bytes: int, default: str = "echo") -> OpTable:
    return OpTable.for_worker(default, payload_capacity(slot_bytes))


def f32(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def expected_result(op: str, data: bytes) -> bytes:
    """Each op computed independently of gpufeed's code."""
    if op == "echo":
        return data
    if op == "sha256":
        return hashlib.sha256(data).digest()
    if op == "vector_add":
        v = np.frombuffer(data, dtype="<f4")
        return f32(v[: len(v) // 2] + v[len(v) // 2 :])
    raise AssertionError(op)


def payload_for(op: str, size: int, rng: np.random.Generator) -> bytes:
    if op == "vector_add":
        return f32(rng.standard_normal(size // 8 * 2))
    if op == "dense":
        return f32(rng.standard_normal(8))
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def round_trip(entries, slot_bytes, table, *, split: int, first_seq: int = 0):
    slots = np.zeros((len(entries) + 1, slot_bytes), dtype=np.uint8)
    batch = pack(
        entries, (slots[:split], slots[split:]), table=table, first_seq=first_seq, now_ms=0
    )
    results = np.zeros_like(slots)
    reserved = (results[: batch.count // 2], results[batch.count // 2 : batch.count])
    cpu.process(table, (slots[: batch.count],), reserved, reference=True)
    return batch, unpack_results(reserved, batch)


@settings(max_examples=120, deadline=None)
@given(
    op=st.sampled_from(["echo", "sha256", "vector_add", "dense"]),
    slot_bytes=st.sampled_from(SLOT_SIZES),
    sizes=st.lists(st.integers(0, 1 << 20), min_size=1, max_size=40),
    split=st.integers(0, 41),
    first_seq=st.sampled_from([0, 7, 2**32 - 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_op_round_trips(op, slot_bytes, sizes, split, first_seq, seed) -> None:
    rng = np.random.default_rng(seed)
    capacity = payload_capacity(slot_bytes)
    # sizes from 0 to exactly the payload capacity, both ends included
    sizes = [s % (capacity + 1) for s in sizes] + [0, capacity]
    if op == "vector_add":
        sizes = [s // 8 * 8 for s in sizes]
    table = table_for(slot_bytes)
    datas = [payload_for(op, s, rng) for s in sizes]
    entries = [
        (f"{i}-0".encode(), {b"data": d, b"op": op.encode(), b"cid": b"c%d" % i})
        for i, d in enumerate(datas)
    ]
    batch, results = round_trip(entries, slot_bytes, table, split=split, first_seq=first_seq)
    assert batch.rejects == []
    assert [r.src for r in results] == [e[0] for e in entries]
    assert [r.cid for r in results] == [e[1][b"cid"] for e in entries]
    assert all(r.status == "ok" for r in results)
    for result, data in zip(results, datas, strict=True):
        if op == "dense":
            w, b = default_dense_model()
            x = np.frombuffer(data, "<f4").astype(np.float64)
            want = np.maximum(w.astype(np.float64) @ x + b, 0)
            assert np.allclose(np.frombuffer(result.body, "<f4"), want, rtol=1e-5, atol=1e-5)
        else:
            assert result.body == expected_result(op, data)


def test_a_mixed_batch_runs_each_message_through_its_own_op() -> None:
    table = table_for(128)
    a, b = np.arange(4, dtype="<f4"), np.ones(4, dtype="<f4")
    entries = [
        (b"1-0", {b"data": b"hello"}),  # the worker's op: echo
        (b"2-0", {b"data": b"hello", b"op": b"sha256"}),
        (b"3-0", {b"data": f32(np.concatenate([a, b])), b"op": b"vector_add"}),
    ]
    _, results = round_trip(entries, 128, table, split=1)
    assert [r.body for r in results] == [
        b"hello",
        hashlib.sha256(b"hello").digest(),
        f32(a + b),
    ]


def reject_of(entry, slot_bytes=64, table=None, now_ms=0):
    table = table or table_for(slot_bytes)
    batch = pack([entry], np.zeros((1, slot_bytes), np.uint8), table=table, first_seq=0,
                 now_ms=now_ms)  # fmt: skip
    assert batch.count == 0 and len(batch.rejects) == 1
    return batch.rejects[0]


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        ({b"payload": b"x"}, "error", "missing data field"),
        (None, "error", "entry has no fields"),
        ({b"data": b"x" * 49}, "error", "49 bytes is larger than the 48-byte"),
        ({b"data": b"x" * 12, b"op": b"vector_add"}, "error", "wrong payload length 12"),
        ({b"data": b"x" * 12, b"op": b"dense"}, "error", "exactly 32 bytes"),
        ({b"data": b"x", b"op": b"nosuch"}, "error", "unknown op 'nosuch'"),
        ({b"data": b"x", b"deadline_ms": b"soon"}, "error", "malformed deadline_ms"),
        ({b"data": b"x", b"deadline_ms": b"-5"}, "error", "malformed deadline_ms"),
        # Past what an int64 holds (the deadline column is one): bad input, not a crash.
        ({b"data": b"x", b"deadline_ms": b"9223372036854775808"}, "error", "malformed deadline"),
        ({b"data": b"x", b"deadline_ms": b"9" * 40}, "error", "malformed deadline_ms"),
        ({b"data": b"x", b"deadline_ms": b" 1000"}, "error", "malformed deadline_ms"),
        ({b"data": b"x", b"deadline_ms": b"+1000"}, "error", "malformed deadline_ms"),
        ({b"data": b"x", b"deadline_ms": b"1_000"}, "error", "malformed deadline_ms"),
        ({b"data": b"x", b"deadline_ms": b"1000"}, "expired", "deadline_ms passed"),
    ],
)
def test_each_kind_of_bad_input_gets_its_error_record(fields, status, reason) -> None:
    reject = reject_of((b"9-1", fields), now_ms=2000)
    assert reject.src == b"9-1"
    assert reject.status == status
    assert reason in reject.reason and reason.encode() in reject.body
    assert reject.status.dead_letter == (status == "error")


def test_the_latest_deadline_an_int64_holds_is_a_deadline_not_an_error() -> None:
    fields = {b"data": b"x", b"deadline_ms": b"%d" % (2**63 - 1)}
    batch = pack([(b"1-0", fields)], np.zeros((1, 64), np.uint8), table=table_for(64),
                 first_seq=0, now_ms=int(time.time() * 1000))  # fmt: skip
    assert batch.count == 1 and not batch.rejects


def test_rejects_keep_cid_and_reply_to_and_do_not_disturb_the_batch() -> None:
    entries = [
        (b"1-0", {b"data": b"ok"}),
        (b"2-0", {b"data": b"x" * 100, b"cid": b"c2", b"reply_to": b"replies"}),
        (b"3-0", {b"data": b"fine", b"deadline_ms": str(int(time.time() * 1000) + 60_000)}),
    ]
    entries[2][1][b"deadline_ms"] = entries[2][1][b"deadline_ms"].encode()
    batch, results = round_trip(entries, 64, table_for(64), split=0)
    assert [r.body for r in results] == [b"ok", b"fine"]
    (reject,) = batch.rejects
    assert (reject.cid, reject.reply_to) == (b"c2", b"replies")


def test_on_a_cluster_reply_to_must_share_the_queues_hash_slot() -> None:
    same = {b"data": b"a", b"reply_to": b"gpufeed:{jobs}:reply:client-7"}
    other = {b"data": b"b", b"reply_to": b"replies:client-7"}
    slots = np.zeros((2, 64), np.uint8)
    batch = pack([(b"1-0", same), (b"2-0", other)], slots, table=table_for(64), first_seq=0,
                 now_ms=0, reply_to_check=cluster_reply_check("gpufeed:{jobs}:in"))  # fmt: skip
    assert batch.ids == [b"1-0"] and batch.reply_to == [same[b"reply_to"]]
    (reject,) = batch.rejects
    assert reject.src == b"2-0" and "hash slot" in reject.reason
    assert reject.reply_to is None  # the error result goes to the queue's output stream
    # Without a cluster any key will do.
    plain = pack([(b"2-0", other)], slots, table=table_for(64), first_seq=0, now_ms=0)
    assert plain.count == 1 and not plain.rejects


def test_an_op_that_cannot_fit_the_slot_is_refused_by_name() -> None:
    big = Dense(np.ones((20, 8), np.float32), np.zeros(20, np.float32))
    table = OpTable([table_for(64).default, big], payload_capacity(64))
    reject = reject_of((b"1-0", {b"data": b"x" * 32, b"op": b"dense"}), table=table)
    assert "80-byte results" in reject.reason


def test_reply_entries_reads_resp2_and_resp3_shapes() -> None:
    e1, e2 = (b"1-0", {b"data": b"a"}), (b"2-0", None)
    assert reply_entries([[b"q", [e1, e2]]]) == [e1, e2]
    assert reply_entries({b"q": [[b"1-0", {b"data": b"a"}], [b"2-0", None]]}) == [e1, e2]
    assert reply_entries([]) == reply_entries(None) == reply_entries({}) == []


def test_plain_columns_take_only_reads_where_every_entry_is_data_alone() -> None:
    plain = [[b"1-0", [b"data", b"a"]], [b"2-0", [b"data", b"b"]]]
    assert plain_columns([[b"q", plain]]) == Columns([b"1-0", b"2-0"], [b"a", b"b"])
    with_cid = [*plain, [b"3-0", [b"data", b"c", b"cid", b"x"]]]
    not_data = [*plain, [b"3-0", [b"date", b"c"]]]
    deleted = [*plain, [b"3-0", None]]
    for entries in (with_cid, not_data, deleted):
        assert plain_columns([[b"q", entries]]) is None
        assert len(reply_entries([[b"q", entries]])) == 3  # the general path reads them
    assert plain_columns({b"q": plain}) is None  # RESP3, as a cluster node replies
    parsed = [(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b", b"op": b"echo"})]
    assert plain_columns([[b"q", parsed]]) is None  # redis-py's parsed RESP2
    assert plain_columns(None) is None and plain_columns([]) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(10**12, 10**13 - 1), st.integers(0, 2**52)), max_size=60),
       st.integers(0, 2**64 - 1))  # fmt: skip
def test_ids_ms_reads_the_time_part_of_any_entry_id(times, seq) -> None:
    ids = [b"%d-%d" % (ms, (seq + i) % 2**64) for i, ms in enumerate(times)]
    assert ids_ms(ids).tolist() == [float(id_ms(i)) for i in ids] == [float(t) for t in times]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(10**12, 10**13 - 1), st.integers(0, 2**64 - 1)),
                          st.integers(0, 2**64 - 1)), min_size=1, max_size=40))  # fmt: skip
def test_id_range_is_the_lowest_and_the_highest_id_in_stream_order(parts) -> None:
    lowest, highest = id_range([b"%d-%d" % p for p in parts])
    assert lowest == b"%d-%d" % min(parts)
    assert highest == b"%d-%d" % max(parts)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 80), min_size=1, max_size=40),
    split=st.integers(0, 41),
    first_seq=st.sampled_from([0, 2**32 - 3]),
    fail=st.sets(st.integers(0, 39), max_size=3),
)
def test_plain_reads_pack_and_answer_exactly_like_the_general_path(
    sizes, split, first_seq, fail
) -> None:
    """Columns (data-only reads) and ``Results`` (plain results kept as columns)
    are shortcuts: same slots, same rejects, same results as entry by entry."""
    table = OpTable.for_worker("vector_add", payload_capacity(64))  # 8-byte multiples, <= 48
    datas = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    ids = [b"17000000%05d-%d" % (i // 3, i % 3) for i in range(len(datas))]
    general_slots, plain_slots = (np.zeros((len(datas) + 1, 64), np.uint8) for _ in "ab")

    def run(entries, slots):
        parts = (slots[:split], slots[split:])
        batch = pack(entries, parts, table=table, first_seq=first_seq, now_ms=0)
        results = np.zeros_like(slots)
        cpu.process(table, (slots[: batch.count],), (results[: batch.count],), reference=True)
        headers(results)["flags"][[i for i in fail if i < batch.count]] = 1  # some fail
        parts = (results[: batch.count // 2], results[batch.count // 2 : batch.count])
        collected = Results()
        assert collect_results(parts, batch, 0, collected) == batch.count
        return batch, unpack_results(parts, batch), collected

    general = run(list(zip(ids, ({b"data": d} for d in datas), strict=True)), general_slots)
    plain = run(Columns(ids, datas), plain_slots)
    assert np.array_equal(general_slots, plain_slots)
    assert general[0].ids == plain[0].ids
    assert general[0].rejects == plain[0].rejects
    assert general[1] == plain[1]
    for collected in (general[2], plain[2]):
        entries = sorted(collected.entries())
        assert entries == sorted(general[1])
        assert collected.ids == [r.src for r in general[1] if r.plain]


def test_an_empty_cid_is_still_echoed_on_the_result() -> None:
    table = table_for(64)
    slots = np.zeros((2, 64), np.uint8)
    entries = [(b"1-0", {b"data": b"a", b"cid": b""}), (b"2-0", {b"data": b"b"})]
    batch = pack(entries, slots, table=table, first_seq=0, now_ms=0)
    results = np.zeros_like(slots)
    cpu.process(table, (slots,), (results,))
    collected = Results()
    collect_results(results, batch, 0, collected)
    assert [(r.src, r.cid) for r in collected.other] == [(b"1-0", b"")]
    assert collected.ids == [b"2-0"]


def test_results_keep_plain_results_as_columns_and_chunk_them_first() -> None:
    mixed = [ResultEntry(b"%d-0" % i, "ok", b"r%d" % i) for i in range(5)]
    mixed.insert(2, ResultEntry(b"9-0", "error", b"bad"))
    mixed.insert(4, ResultEntry(b"8-0", "ok", b"r", cid=b"c"))
    results = Results.of(mixed)
    assert results.ids == [b"%d-0" % i for i in range(5)]
    assert [r.src for r in results.other] == [b"9-0", b"8-0"]
    chunks = list(results.chunks(3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [r for c in chunks for r in c.entries()] == results.entries()
    assert sorted(results.entries()) == sorted(mixed)


def test_results_with_the_wrong_sequence_number_are_refused() -> None:
    table = table_for(64)
    slots = np.zeros((2, 64), np.uint8)
    batch = pack([(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})], slots, table=table,
                 first_seq=10, now_ms=0)  # fmt: skip
    results = np.zeros_like(slots)
    cpu.process(table, (slots,), (results,))
    headers(results)["seq"][1] = 99
    with pytest.raises(ResultOutOfOrder, match="seq 99, expected 11"):
        unpack_results(results, batch)


def test_a_failed_batch_answers_every_message_with_the_reason() -> None:
    table = table_for(64)
    slots = np.zeros((3, 64), np.uint8)
    batch = pack([(b"%d-0" % i, {b"data": b"z"}) for i in range(3)], slots, table=table,
                 first_seq=0, now_ms=0)  # fmt: skip
    results = np.zeros_like(slots)
    write_error_results(results, headers(slots), "kernel failed: out of memory")
    got = unpack_results(results, batch)
    assert {(r.status, r.body) for r in got} == {("error", b"kernel failed: out of memory")}
    # A reason longer than the payload area is cut to it, not replaced.
    long = "the GPU failed on this message: " + "x" * 80
    write_error_results(results, headers(slots), long)
    assert {r.body for r in unpack_results(results, batch)} == {long[:48].encode()}


def test_too_few_slots_is_a_caller_bug() -> None:
    with pytest.raises(InternalError, match="only 1 slots"):
        pack([(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})], np.zeros((1, 64), np.uint8),
             table=table_for(64), first_seq=0, now_ms=0)  # fmt: skip


def test_header_layout_is_the_documented_little_endian_struct() -> None:
    slots = np.zeros((1, 64), np.uint8)
    pack([(b"1-0", {b"data": b"abc", b"op": b"sha256"})], slots, table=table_for(64),
         first_seq=0x01020304, now_ms=0)  # fmt: skip
    sha_id = table_for(64).ids["sha256"]
    assert struct.unpack_from("<IHHII", slots[0]) == (3, sha_id, 0, 0x01020304, 0)
    assert bytes(slots[0, 16:19]) == b"abc"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"data": b"x", **{b"f%d" % i: b"" for i in range(64)}}, "too many fields: 65"),
        ({b"data": b"x", b"cid": b"\xff"}, "cid is not valid UTF-8"),
        ({b"data": b"x", b"cid": b"c" * 257}, "cid is 257 bytes"),
        ({b"data": b"x", b"reply_to": b""}, "reply_to must be a stream key"),
    ],
)
def test_unusable_metadata_is_rejected_without_echoing_it(fields, reason) -> None:
    reject = reject_of((b"1-0", fields))
    assert reason in reject.reason
    assert reject.cid is None and reject.reply_to is None


OWN_INPUT = b"gpufeed:{jobs}:in"


def own_input_check(reply_to: bytes) -> str | None:
    return "reply_to names the queue's own input stream" if reply_to == OWN_INPUT else None


@pytest.mark.parametrize(
    ("fields", "cid", "reply_to", "reason"),
    [
        # Whatever else is wrong, a usable cid and reply_to are echoed and honoured.
        ({b"payload": b"x", b"cid": b"c1", b"reply_to": b"r"}, b"c1", b"r", "missing data"),
        ({b"data": b"x" * 49, b"cid": b"c2", b"reply_to": b"r"}, b"c2", b"r", "larger than"),
        ({b"data": b"x", b"op": b"nope", b"cid": b"c3", b"reply_to": b"r"}, b"c3", b"r",
         "unknown op"),
        ({b"data": b"x", b"cid": b"c" * 300, b"reply_to": b"r"}, None, b"r", "cid is 300"),
        ({b"data": b"x", b"cid": b"c4", **{b"f%d" % i: b"" for i in range(64)},
          b"reply_to": b"r"}, b"c4", b"r", "too many fields"),
        # An unusable reply_to: answered on the output stream, saying why.
        ({b"data": b"x", b"cid": b"c5", b"reply_to": OWN_INPUT}, b"c5", None,
         "reply_to names the queue's own input stream"),
        ({b"payload": b"x", b"cid": b"c6", b"reply_to": b""}, b"c6", None,
         "missing data field; not answered on reply_to: reply_to must be a stream key"),
        ({b"data": b"x", b"cid": b"\xff", b"reply_to": OWN_INPUT}, None, None,
         "cid is not valid UTF-8; not answered on reply_to: reply_to names the queue's own"),
    ],
)  # fmt: skip
def test_every_reject_can_be_matched_by_its_sender(fields, cid, reply_to, reason) -> None:
    batch = pack([(b"1-0", fields)], np.zeros((1, 64), np.uint8), table=table_for(64),
                 first_seq=0, now_ms=0, reply_to_check=own_input_check)  # fmt: skip
    (reject,) = batch.rejects
    assert (reject.cid, reject.reply_to) == (cid, reply_to)
    assert reason in reject.reason


def test_a_worker_refuses_reply_to_streams_among_the_queues_own_keys() -> None:
    from gpufeed.worker.config import WorkerConfig

    check = WorkerConfig(queue="jobs").reply_to_check()
    assert "own input stream" in (check(b"gpufeed:{jobs}:in") or "")
    assert "own dead-letter stream" in (check(b"gpufeed:{jobs}:dead") or "")
    # a stream at a lease key would keep workers under that name from starting
    assert "consumer-name leases" in (check(b"gpufeed:{jobs}:consumer:host-a") or "")
    assert check(b"gpufeed:{jobs}:reply:web-1") is None


def test_a_message_predicted_to_miss_its_deadline_is_shed_without_a_slot() -> None:
    now = 1_000_000
    entries = [
        (b"1-0", {b"data": b"a", b"deadline_ms": b"%d" % (now + 50)}),  # before the finish
        (b"2-0", {b"data": b"b", b"deadline_ms": b"%d" % (now + 500)}),  # after it
        (b"3-0", {b"data": b"c"}),  # no deadline: never shed
        (b"4-0", {b"data": b"d", b"deadline_ms": b"%d" % (now - 1)}),  # already past
    ]
    batch = pack(entries, np.zeros((4, 64), np.uint8), table=table_for(64), first_seq=0,
                 now_ms=now, finish_by_ms=now + 100)  # fmt: skip
    assert batch.ids == [b"2-0", b"3-0"]
    shed, past = batch.rejects
    assert (shed.src, shed.status, past.src, past.status) == (b"1-0", "expired", b"4-0", "expired")
    assert "would pass before the message could be answered" in shed.reason
    assert "deadline_ms passed" in past.reason
    assert batch.shed == 1, "shedding is counted apart from what came already expired"
