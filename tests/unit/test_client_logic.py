"""The clients' own logic: fields written, results matched to their futures."""

from __future__ import annotations

import fakeredis
import numpy as np
import pytest

from gpufeed.client import Client
from gpufeed.client.messages import decoder, message, outcome
from gpufeed.errors import ConfigError, ResultError, ResultExpired
from gpufeed.ops import Tensor, TensorOp


def test_a_result_read_before_its_xadd_returned_still_settles_its_future() -> None:
    """The worker can answer before the submitting thread has the entry id back."""
    with Client("redis://unused", "q", connection=fakeredis.FakeRedis()) as client:
        client._deliver(b"5-0", b"early")
        assert client._expect(b"5-0", None).result(0) == b"early"
        later = client._expect(b"6-0", None)
        assert not later.done()
        client._deliver(b"6-0", ResultError("op failed", b"6-0"))
        with pytest.raises(ResultError, match="op failed"):
            later.result(0)


def test_a_connection_that_decodes_responses_is_refused() -> None:
    with pytest.raises(ConfigError, match="decode_responses"):
        Client("redis://unused", "q", connection=fakeredis.FakeRedis(decode_responses=True))


def test_a_tensor_ops_result_comes_back_as_its_output_array() -> None:
    op = TensorOp("pair", lambda x: x, Tensor("float32", (2,)), Tensor("<i2", (2, 2)))
    with Client("redis://unused", "q", connection=fakeredis.FakeRedis()) as client:
        client._deliver(b"7-0", np.array([[1, -2], [3, 4]], "<i2").tobytes())
        got = client._expect(b"7-0", decoder(op)).result(0)
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
    with pytest.raises(ConfigError, match="bytes or str"):
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
