"""The clients' own logic: fields written, results matched to their futures."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import fakeredis
import numpy as np
import pytest
import redis

from gpufeed.client import Client
from gpufeed.client.core import Pending
from gpufeed.client.messages import decoder, message, outcome
from gpufeed.errors import ClientClosed, ConfigError, ResultError, ResultExpired
from gpufeed.ops import Tensor, TensorOp


def test_a_result_read_before_its_xadd_returned_still_settles_its_future() -> None:
    """The worker can answer before the submitting thread has the entry id back."""
    pending = Pending("c")
    pending.begin()
    pending.deliver(b"5-0", b"early")
    early: Future[bytes] = Future()
    pending.expect(b"5-0", early, None)
    later: Future[bytes] = Future()
    pending.expect(b"6-0", later, None)
    pending.end()
    assert early.result(0) == b"early" and not later.done()
    pending.deliver(b"6-0", ResultError("op failed", b"6-0"))
    with pytest.raises(ResultError, match="op failed"):
        later.result(0)


def test_a_result_nobody_can_claim_is_not_kept() -> None:
    """Outside a submit no future can be made for an id already answered (a retried
    XADD's first copy, say): its result is dropped, not kept for ever."""
    pending = Pending("c")
    pending.deliver(b"1-0", b"orphan")
    pending.begin()
    pending.deliver(b"2-0", b"orphan too")
    pending.end()
    pending.begin()
    future: Future[bytes] = Future()
    pending.expect(b"2-0", future, None)
    pending.end()
    assert not future.done() and not pending._early


def test_a_submit_that_overlaps_close_fails_with_client_closed() -> None:
    pending = Pending("c")
    pending.begin()
    pending.close()
    future: Future[bytes] = Future()
    pending.expect(b"3-0", future, None)  # its XADD's reply came after the close
    with pytest.raises(ClientClosed):
        future.result(0)
    with pytest.raises(ClientClosed):
        pending.begin()


def test_cancelled_futures_and_undecodable_results_touch_nothing_else() -> None:
    pending = Pending("c")
    pending.begin()
    cancelled: Future[bytes] = Future()
    odd: Future[Any] = Future()
    fine: Future[Any] = Future()
    decode = decoder(TensorOp("t", lambda x: x, Tensor("f4", (2,)), Tensor("f4", (2,))))
    for entry_id, future in ((b"1-0", cancelled), (b"2-0", odd), (b"3-0", fine)):
        pending.expect(entry_id, future, decode)
    pending.end()
    assert cancelled.cancel()
    pending.deliver(b"1-0", bytes(8))
    pending.deliver(b"2-0", bytes(12))
    pending.deliver(b"3-0", np.array([1, 2], "<f4").tobytes())
    with pytest.raises(ResultError, match="12 bytes does not fit") as failed:
        odd.result(0)
    assert failed.value.src == b"2-0"
    got = fine.result(0)
    got[0] = 5  # the caller's own array
    assert got.tolist() == [5, 2]
    pending.close()  # nothing left to fail; the cancelled one stays cancelled
    assert cancelled.cancelled()


def test_arrays_are_checked_against_the_ops_input() -> None:
    op = TensorOp("v", lambda x, n: x[:, 0], Tensor("<i2", (-1, 2), max_rows=3), Tensor("i2", (2,)))
    assert message(np.ones((2, 2), "i2"), "r", op=op)["data"] == np.ones(4, "<i2").tobytes()
    for bad, why in ((np.ones((4, 2), "i2"), "1 to 3 rows"), (np.ones((2, 3), "i2"), "shape"),
                     (np.ones((2, 2), "i4"), "takes int16, got int32")):  # fmt: skip
        with pytest.raises(ConfigError, match=why):
            message(bad, "r", op=op)


def test_client_names_are_safe_in_keys_and_acl_patterns() -> None:
    with pytest.raises(ConfigError, match="client name"):
        Client("redis://unused", "q", name="a*", connection=fakeredis.FakeRedis())
    with Client("redis://unused", "q", name="web-1", connection=fakeredis.FakeRedis()) as c:
        assert c.reply_key.startswith("gpufeed:{q}:reply:web-1:")


def test_a_connection_that_decodes_responses_is_refused() -> None:
    with pytest.raises(ConfigError, match="decode_responses"):
        Client("redis://unused", "q", connection=fakeredis.FakeRedis(decode_responses=True))


def test_a_tensor_ops_result_comes_back_as_its_output_array() -> None:
    op = TensorOp("pair", lambda x: x, Tensor("float32", (2,)), Tensor("<i2", (2, 2)))
    got = decoder(op)(np.array([[1, -2], [3, 4]], "<i2").tobytes())
    assert got.dtype == np.dtype("<i2") and got.tolist() == [[1, -2], [3, 4]]
    assert message(np.array([1.0, 2.0], ">f4"), "r", op=op) == {
        "data": np.array([1.0, 2.0], "<f4").tobytes(),
        "reply_to": "r",
        "op": "pair",
    }


def test_messages_carry_the_wire_formats_fields() -> None:
    fields = message("héllo", "gpufeed:{q}:reply:me", op="sha256", cid="c1", deadline_ms=17)
    assert fields == {"data": "héllo".encode(), "reply_to": "gpufeed:{q}:reply:me",
                      "op": "sha256", "cid": "c1", "deadline_ms": "17"}  # fmt: skip
    assert message(memoryview(b"ab"), "r") == {"data": b"ab", "reply_to": "r"}
    with pytest.raises(ConfigError, match="bytes, str or a NumPy array"):
        message(12, "r")  # type: ignore[arg-type]


def test_outcomes_by_status() -> None:
    assert outcome({b"src": b"1-0", b"status": b"ok", b"data": b"d"}) == (b"1-0", b"d")
    src, failed = outcome({b"src": b"2-0", b"status": b"error", b"error": b"bad", b"cid": b"c"})
    assert (
        src == b"2-0" and isinstance(failed, ResultError) and not isinstance(failed, ResultExpired)
    )
    assert (failed.reason, failed.cid) == ("bad", b"c")
    _, late = outcome({b"src": b"3-0", b"status": b"expired", b"error": b"deadline passed"})
    assert isinstance(late, ResultExpired) and late.reason == "deadline passed"


def test_an_xadd_redis_refused_fails_its_own_future_in_a_pipeline() -> None:
    pending = Pending("c")
    pending.begin()
    refused = redis.ResponseError("OOM command not allowed")
    futures = pending.expect_all([b"1-0", refused, b"3-0"], Future, None)
    pending.end()
    with pytest.raises(redis.ResponseError, match="OOM"):
        futures[1].result(0)
    pending.deliver(b"1-0", b"a")
    pending.deliver(b"3-0", b"c")
    assert [futures[0].result(0), futures[2].result(0)] == [b"a", b"c"]


def test_an_entry_without_its_input_id_does_not_stop_the_rest_of_its_read() -> None:
    """Something other than a worker wrote to the reply stream: the results read
    with that entry still settle their futures."""
    pending = Pending("c")
    pending.begin()
    first: Future[bytes] = Future()
    second: Future[bytes] = Future()
    pending.expect(b"1-0", first, None)
    pending.expect(b"2-0", second, None)
    pending.end()
    pending.deliver_entries([
        (b"9-0", {b"src": b"1-0", b"status": b"ok", b"data": b"one"}),
        (b"9-1", {b"status": b"ok", b"data": b"stray"}),
        (b"9-2", {b"src": b"2-0", b"status": b"ok", b"data": b"two"}),
    ])  # fmt: skip
    assert first.result(0) == b"one" and second.result(0) == b"two"
