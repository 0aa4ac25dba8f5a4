"""Tensor ops: declared by input and output, run on the cpu backend's NumPy views
and on the batched backend (over the CuPy stand-in)."""

from __future__ import annotations

import numpy as np
import pytest
from fake_cupy import FakeCuPy

import gpufeed.gpu.batched as batched
from gpufeed.errors import ConfigError
from gpufeed.gpu.cpu import compute_isolating
from gpufeed.gpu.select import check_ops
from gpufeed.ops import OpTable, Tensor, TensorOp, Text, load_op, table_program
from gpufeed.packing import STATUS_ERROR, STATUS_OK, write_requests

SLOT = 128
CAP = SLOT - 16


def requests(datas: list[bytes], op_ids: list[int], stale: int = 0xEE) -> np.ndarray:
    """Request slots whose bytes past each payload are stale, as in a used ring."""
    out = np.full((len(datas), SLOT), stale, np.uint8)
    lens = np.array([len(d) for d in datas], np.int64)
    write_requests([out], datas, lens, np.array(op_ids, np.uint16), 0)
    return out


def double(x):
    return x * 2


DOUBLE = TensorOp("double", double, Tensor("float32", (4,)), Tensor("float32", (4,)))


def table_of(op: TensorOp) -> OpTable:
    return OpTable([op, load_op("echo")], CAP)


def test_the_declaration_gives_the_length_rule_and_result_sizes() -> None:
    assert DOUBLE.length_rule == "exactly 16 bytes: float32 (4,)"
    lens = np.array([0, 15, 16, 17, 32])
    assert DOUBLE.valid_lengths(lens).tolist() == [False, False, True, False, False]
    assert DOUBLE.output_lengths(lens).tolist() == [16] * 5
    rows = TensorOp("rows", sum, Tensor("<i4", (-1, 2), max_rows=3), Tensor("int32", (2,)))
    assert rows.length_rule == "a multiple of 8 bytes, at most 24: int32 (rows, 2), 1 to 3 rows"
    assert rows.valid_lengths(np.array([0, 8, 12, 24, 32])).tolist() == [
        False, True, False, True, False
    ]  # fmt: skip
    assert Text(64).describe() == "UTF-8 text of at most 64 bytes"
    with pytest.raises(ConfigError, match="max_rows"):
        Tensor("float32", (-1, 4))
    for not_numeric in ("U8", "S4", "datetime64[s]", object):
        with pytest.raises(ConfigError, match="numeric"):
            Tensor(not_numeric, (2,))
    with pytest.raises(ConfigError, match="max_bytes must be >= 1"):
        Text(0)
    with pytest.raises(ConfigError, match="fixed shape"):
        TensorOp("bad", double, Tensor("float32", (4,)), Tensor("float32", (-1,), max_rows=2))
    too_big = TensorOp("big", double, Tensor("float32", (64,)), Tensor("float32", (4,)))
    assert "accepts no payload" in str(too_big.check_capacity(CAP))


def test_a_fixed_shape_input_is_a_view_of_the_slots_not_a_copy() -> None:
    seen = []

    def spy(x):
        seen.append(x)
        return x * 2

    op = TensorOp("spy", spy, Tensor("float32", (2, 2)), Tensor("float32", (2, 2)))
    x = np.arange(12, dtype="<f4").reshape(3, 2, 2)
    slots = requests([row.tobytes() for row in x], [0, 0, 0])
    out, lens = op.reference(slots[:, 16:], np.full(3, 16, np.int64))
    assert seen[0].shape == (3, 2, 2) and np.shares_memory(seen[0], slots)
    assert np.array_equal(out[:, :16].view("<f4").reshape(3, 2, 2), x * 2)
    assert lens.tolist() == [16, 16, 16]


def test_variable_rows_come_padded_with_zeros_and_counted() -> None:
    def total(x, rows):
        assert x.shape == (3, 3, 2)
        return np.stack([x.sum(axis=1), np.stack([rows, rows], axis=1)], axis=1).astype(np.int32)

    op = TensorOp("total", total, Tensor("int32", (-1, 2), max_rows=3), Tensor("int32", (2, 2)))
    inputs = [np.array([[1, 2]]), np.array([[1, 1], [2, 2], [3, 3]]), np.array([[5, 5], [6, 6]])]
    slots = requests([a.astype("<i4").tobytes() for a in inputs], [0, 0, 0])
    lens = np.array([8, 24, 16], np.int64)
    out, _ = op.reference(slots[:, 16:], lens)
    got = out[:, :16].view("<i4").reshape(3, 2, 2)
    # Stale bytes past a payload would add 0xEEEEEEEE to the sums: they are zeroed.
    assert got[:, 0].tolist() == [[1, 2], [6, 6], [11, 11]]
    assert got[:, 1, 0].tolist() == [1, 3, 2]


def test_text_in_and_a_failing_message_fails_alone() -> None:
    op = TensorOp("length", lambda texts: np.array([[len(t)] for t in texts], np.int64),
                  Text(32), Tensor("int64", (1,)))  # fmt: skip
    table = table_of(op)
    slots = requests(["héllo".encode(), b"\xff\xfe not UTF-8", b"ok"], [0, 0, 0])
    out, lens, status = compute_isolating(table, slots)
    assert status.tolist() == [STATUS_OK, STATUS_ERROR, STATUS_OK]
    assert out[0, :8].view("<i8")[0] == 5 and out[2, :8].view("<i8")[0] == 2
    assert bytes(out[1, : lens[1]]) == b"op 'length': not UTF-8 text: invalid start byte at byte 0"


def test_a_wrong_output_shape_is_an_error_naming_both_shapes() -> None:
    op = TensorOp("wrong", lambda x: x[:, :2], Tensor("float32", (4,)), Tensor("float32", (4,)))
    out, lens, status = compute_isolating(table_of(op), requests([bytes(16)], [0]))
    assert status.tolist() == [STATUS_ERROR]
    assert b"returned shape (1, 2), expected (1, 4)" in bytes(out[0, : lens[0]])


def test_the_batched_backend_runs_tensor_ops_alone_and_mixed(monkeypatch) -> None:
    table = table_of(DOUBLE)
    fake = FakeCuPy(table, lambda s: None)
    monkeypatch.setattr(batched, "import_cupy", lambda: fake)
    backend = batched.BatchedBackend(table, SLOT, 16)
    x = np.arange(8, dtype="<f4").reshape(2, 4)
    alone = requests([row.tobytes() for row in x], [0, 0])
    mixed = requests([x[0].tobytes(), b"echoed", x[1].tobytes()], [0, table.ids["echo"], 0])
    backend.submit(0, alone)
    backend.submit(0, mixed)
    done = []
    while backend.in_flight():
        done += backend.poll(1.0)
    assert fake.launches == [3], "only the mixed batch ran the kernel"
    assert np.array_equal(done[0].out[:, :16].view("<f4"), x * 2)
    assert done[1].status.tolist() == [STATUS_OK] * 3, "the kernel's errors were redone"
    assert np.array_equal(done[1].out[[0, 2], :16].view("<f4"), x * 2)
    assert bytes(done[1].out[1, :6]) == b"echoed"


def test_the_persistent_backend_refuses_a_tensor_op_and_the_program_leaves_it_out() -> None:
    table = table_of(DOUBLE)
    with pytest.raises(ConfigError, match=r"'double' is a tensor op.*--backend batched"):
        check_ops("persistent", table)
    check_ops("batched", table)
    source = table_program(table.ops)
    assert "case 0:" not in source and "case 1: gpufeed_op_echo" in source


def test_a_torch_op_gets_and_returns_tensors_on_the_cpu() -> None:
    torch = pytest.importorskip("torch")  # the example's extra; make test runs without it
    seen = []

    def torch_double(x):
        seen.append(type(x))
        return x * 2

    op = TensorOp("tdouble", torch_double, Tensor("float32", (4,)), Tensor("float32", (4,)),
                  framework="torch")  # fmt: skip
    x = np.arange(8, dtype="<f4").reshape(2, 4)
    out, _ = op.reference(requests([r.tobytes() for r in x], [0, 0])[:, 16:], np.full(2, 16))
    assert seen == [torch.Tensor]
    assert np.array_equal(out[:, :16].view("<f4"), x * 2)


def test_a_torch_op_with_variable_rows_gets_tensors_on_the_batched_backend(monkeypatch) -> None:
    """Both arguments (padded rows, counts) reach the function as tensors, through
    DLPack from the device arrays, and its tensor comes back into the slots."""
    torch = pytest.importorskip("torch")
    seen = []

    def row_sums(x, rows):
        seen.append((type(x), type(rows)))
        return x.sum(dim=1)

    op = TensorOp("rowsum", row_sums, Tensor("<f4", (-1, 2), max_rows=3), Tensor("<f4", (2,)),
                  framework="torch")  # fmt: skip
    table = table_of(op)
    monkeypatch.setattr(batched, "import_cupy", lambda: FakeCuPy(table, lambda s: None))
    backend = batched.BatchedBackend(table, SLOT, 16)
    a, b = np.ones((1, 2), "<f4"), np.arange(6, dtype="<f4").reshape(3, 2)
    backend.submit(0, requests([a.tobytes(), b.tobytes()], [0, 0]))
    [batch] = backend.poll(1.0)
    assert seen == [(torch.Tensor, torch.Tensor)]
    assert batch.status.tolist() == [STATUS_OK, STATUS_OK]
    assert batch.out[:, :8].view("<f4").tolist() == [[1, 1], [6, 9]]


def test_variable_rows_wider_than_a_slot_are_refused_at_start_up() -> None:
    op = TensorOp("wide", lambda x, n: x[:, 0], Tensor("<f4", (-1, 4), max_rows=100),
                  Tensor("<f4", (4,)))  # fmt: skip
    with pytest.raises(ConfigError, match=r"up to 1600 bytes .* more than the 112-byte"):
        table_of(op)


def test_on_the_batched_backend_a_message_that_fails_fails_alone(monkeypatch) -> None:
    op = TensorOp("length", lambda texts: np.array([[len(t)] for t in texts], np.int64),
                  Text(32), Tensor("int64", (1,)))  # fmt: skip
    table = table_of(op)
    fake = FakeCuPy(table, lambda s: None)
    monkeypatch.setattr(batched, "import_cupy", lambda: fake)
    backend = batched.BatchedBackend(table, SLOT, 16)
    backend.submit(0, requests([b"one", b"\xff bad", b"three", b"four"], [0, 0, 0, 0]))
    done = []
    while backend.in_flight():
        done += backend.poll(1.0)
    [batch] = done
    assert batch.status.tolist() == [STATUS_OK, STATUS_ERROR, STATUS_OK, STATUS_OK]
    assert [int(batch.out[i, :8].view("<i8")[0]) for i in (0, 2, 3)] == [3, 5, 4]
    reason = bytes(batch.out[1, : batch.out_lens[1]])
    assert reason == b"op 'length': not UTF-8 text: invalid start byte at byte 0"


@pytest.mark.parametrize(
    "spec",
    [Text(40), Tensor("f4", (3, 2)), Tensor("int16", (-1, 5), max_rows=4), Tensor(bool, (16,))],
    ids=["text", "fixed", "variable", "bool"],
)
def test_samples_are_valid_inputs_and_reproducible(spec) -> None:
    op = TensorOp("s", lambda *a: np.zeros((len(a[0]), 1), np.float32), spec, Tensor("f4", (1,)))
    made = op.samples(200, seed=3)
    raw = [x.encode() if isinstance(x, str) else x.tobytes() for x in made]
    assert op.valid_lengths(np.array([len(b) for b in raw], np.int64)).all()
    assert [x.encode() if isinstance(x, str) else x.tobytes() for x in op.samples(200, 3)] == raw
    assert len(set(raw)) > 100  # varied, as a benchmark's inputs should be
