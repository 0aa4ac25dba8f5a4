"""``gpufeed_batch`` and every op's device function, built as host C++, answer the
same slots as each op's NumPy reference: byte for byte (``dense``: within float
tolerance), at several slot sizes, in partial batches, with the longest payloads."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from host_program import build

from gpufeed.gpu import cpu
from gpufeed.ops import BUILTINS, Op, OpTable, load_op
from gpufeed.packing import HEADER_BYTES, Status, headers, payload_capacity, write_requests

pytestmark = pytest.mark.cuda_host

DOCS = Path(__file__).parents[2] / "docs" / "ops.md"


def documented_op() -> Op:
    """The user op that docs/ops.md teaches (its first Python example), as written there."""
    (example,) = re.findall(r"## Writing an op.*?```python\n(.*?)```", DOCS.read_text(), re.S)
    namespace: dict[str, object] = {}
    exec(example, namespace)
    op = namespace["Negate"]
    assert isinstance(op, type) and issubclass(op, Op)
    return op()


def ops() -> dict[str, Op]:
    found = {name: load_op(name) for name in sorted(BUILTINS)}
    found["negate"] = documented_op()
    return found


def requests_for(table: OpTable, slot_bytes: int, n: int, seed: int) -> np.ndarray:
    """``n`` request slots over every op of ``table``, random valid lengths, the
    longest valid one and the shortest among them."""
    rng = np.random.default_rng(seed)
    capacity = payload_capacity(slot_bytes)
    lens_all = np.arange(capacity + 1, dtype=np.int64)
    op_ids = rng.integers(0, len(table), n).astype(np.uint16)
    lens = np.zeros(n, np.int64)
    for op_id, op in enumerate(table.ops):
        valid = lens_all[op.valid_lengths(lens_all)]
        rows = np.flatnonzero(op_ids == op_id)
        lens[rows] = rng.choice(valid, len(rows))
        lens[rows[:1]] = valid.max()  # the longest payload the op takes
        lens[rows[1:2]] = valid.min()
    # float32 values, so the float ops see numbers and not NaN bit patterns
    floats = rng.standard_normal((n, capacity // 4)).astype("<f4").view(np.uint8)
    datas = [floats[i, : lens[i]].tobytes() for i in range(n)]
    slots = np.zeros((n, slot_bytes), np.uint8)
    write_requests([slots], datas, lens, op_ids, first_seq=2**32 - 3)
    return slots


def assert_same_results(got: np.ndarray, want: np.ndarray, table: OpTable) -> None:
    got_h, want_h = headers(got), headers(want)
    assert np.array_equal(got_h, want_h), "headers: len, op, flags, seq"
    for i in range(len(got)):
        n = int(got_h["len"][i])
        mine = got[i, HEADER_BYTES : HEADER_BYTES + n]
        theirs = want[i, HEADER_BYTES : HEADER_BYTES + n]
        if table[int(got_h["op"][i])].name == "dense":
            np.testing.assert_allclose(mine.view("<f4"), theirs.view("<f4"), rtol=1e-5, atol=1e-6)
        else:
            assert mine.tobytes() == theirs.tobytes(), (i, table[int(got_h["op"][i])].name)


@pytest.mark.parametrize("name", sorted(ops()))
@pytest.mark.parametrize("slot_bytes", [64, 256, 4096])
@pytest.mark.parametrize("n", [1, 7, 9, 300])
def test_each_op_on_the_batch_kernel_equals_its_reference(name, slot_bytes, n) -> None:
    table = OpTable([ops()[name]], payload_capacity(slot_bytes))
    requests = requests_for(table, slot_bytes, n, seed=n + slot_bytes)
    want = np.zeros_like(requests)
    cpu.process(table, (requests,), (want,), reference=True)
    got = build(table.ops).batch(requests)
    assert_same_results(got, want, table)


@pytest.mark.parametrize("slot_bytes", [64, 1024])
def test_a_batch_of_every_op_at_once_is_dispatched_by_each_slots_op(slot_bytes) -> None:
    table = OpTable(list(ops().values()), payload_capacity(slot_bytes))
    requests = requests_for(table, slot_bytes, 2000, seed=slot_bytes)
    want = np.zeros_like(requests)
    cpu.process(table, (requests,), (want,), reference=True)
    assert_same_results(build(table.ops).batch(requests), want, table)


def test_an_op_id_outside_the_table_gets_an_error_result() -> None:
    table = OpTable([load_op("echo")], payload_capacity(64))
    requests = requests_for(table, 64, 3, seed=1)
    headers(requests)["op"][1] = 7
    got = headers(build(table.ops).batch(requests))
    assert got["flags"].tolist() == [Status.OK.flag, Status.ERROR.flag, Status.OK.flag]
    assert got["len"][1] == 0 and got["op"][1] == 7
