"""Tensor ops on the batched backend on a real GPU: CuPy arrays and torch tensors
on the device, many batches in flight on several streams (the torch path's
memory must not be reused before the batch's copy-out), failures isolated."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_support import needs_gpu
from test_batched_gpu import run_batches

from gpufeed.ops import OpTable, Tensor, TensorOp, Text
from gpufeed.packing import STATUS_ERROR, STATUS_OK, write_requests

pytestmark = [*needs_gpu, pytest.mark.timeout(600)]

SLOT = 256


def slots_of(datas: list[bytes], first_seq: int = 0) -> np.ndarray:
    slots = np.zeros((len(datas), SLOT), np.uint8)
    lens = np.array([len(d) for d in datas], np.int64)
    write_requests([slots], datas, lens, np.zeros(len(datas), np.uint16), first_seq=first_seq)
    return slots


def backend_for(op: TensorOp):
    from gpufeed.gpu.batched import BatchedBackend

    return BatchedBackend(OpTable([op], SLOT - 16), SLOT, 512, streams=4)


def test_a_cupy_op_gets_device_arrays_and_its_results_are_exact() -> None:
    import cupy

    seen = []

    def double(x):
        seen.append(type(x))
        return x * 2

    op = TensorOp("double", double, Tensor("<f4", (8,)), Tensor("<f4", (8,)))
    x = np.random.default_rng(0).standard_normal((300, 8)).astype("<f4")
    backend = backend_for(op)
    (done,) = run_batches(backend, [slots_of([row.tobytes() for row in x])])
    backend.close()
    assert set(seen) == {cupy.ndarray}
    assert (done.status == STATUS_OK).all()
    assert np.array_equal(done.out[:, :32].view("<f4"), x * 2)


def test_torch_ops_on_many_streams_keep_every_batchs_own_results() -> None:
    """200 batches over 4 streams, each function's output a fresh torch allocation:
    a block reused before its batch was copied out would show another batch's
    numbers."""
    torch = pytest.importorskip("torch")
    devices = []

    def scaled(x):
        devices.append(x.device.type)
        return x * 3 + 1

    op = TensorOp("scaled", scaled, Tensor("<f4", (16,)), Tensor("<f4", (16,)), framework="torch")
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((int(n), 16)).astype("<f4") for n in rng.integers(1, 512, 200)]
    backend = backend_for(op)
    done = run_batches(backend, [slots_of([r.tobytes() for r in x]) for x in inputs])
    backend.close()
    assert set(devices) == {"cuda"} and torch.cuda.is_available()
    assert len(done) == len(inputs)
    for x, d in zip(inputs, done, strict=True):
        assert (d.status == STATUS_OK).all()
        np.testing.assert_allclose(d.out[:, :64].view("<f4"), x * 3 + 1, rtol=1e-6)


def test_variable_rows_reach_torch_on_the_device() -> None:
    pytest.importorskip("torch")
    seen = []

    def row_sums(x, rows):
        seen.append((x.device.type, rows.device.type))
        return x.sum(dim=1)

    op = TensorOp("rowsum", row_sums, Tensor("<f4", (-1, 2), max_rows=3), Tensor("<f4", (2,)),
                  framework="torch")  # fmt: skip
    a, b = np.ones((1, 2), "<f4"), np.arange(6, dtype="<f4").reshape(3, 2)
    backend = backend_for(op)
    (done,) = run_batches(backend, [slots_of([a.tobytes(), b.tobytes()])])
    backend.close()
    assert seen == [("cuda", "cuda")]
    assert done.out[:, :8].view("<f4").tolist() == [[1, 1], [6, 9]]


def test_text_that_is_not_utf8_fails_alone_on_the_device() -> None:
    op = TensorOp("length", lambda texts: np.array([[len(t)] for t in texts], np.int64),
                  Text(64), Tensor("<i8", (1,)))  # fmt: skip
    backend = backend_for(op)
    (done,) = run_batches(backend, [slots_of(["héllo".encode(), b"\xff bad", b"ok"])])
    backend.close()
    assert done.status.tolist() == [STATUS_OK, STATUS_ERROR, STATUS_OK]
    assert [int(done.out[i, :8].view("<i8")[0]) for i in (0, 2)] == [5, 2]
    assert b"not UTF-8 text" in bytes(done.out[1, : done.out_lens[1]])


# Run in a fresh interpreter: torch must not be imported before the first batch.
# argv: tests/gpu, tests. On a machine with two GPUs or more the backend serves
# the last one, where a stream or model filed under device 0 would show.
LAZY_TORCH_OP = """
import sys
sys.path[:0] = sys.argv[1:3]
import cupy
import numpy as np
from test_tensor_ops_gpu import SLOT, run_batches, slots_of
from gpufeed.gpu.batched import BatchedBackend
from gpufeed.ops import OpTable, Tensor, TensorOp
from gpufeed.packing import STATUS_OK
assert "torch" not in sys.modules
gpu = cupy.cuda.runtime.getDeviceCount() - 1
seen = []

def where(x):
    import torch  # as a model that loads lazily does

    lane = cupy.cuda.get_current_stream().ptr
    seen.append((torch.cuda.current_stream().cuda_stream == lane,
                 torch.cuda.current_device() == gpu, x.device.index == gpu))
    return x + 1

op = TensorOp("where", where, Tensor("<f4", (4,)), Tensor("<f4", (4,)), framework="torch")
backend = BatchedBackend(OpTable([op], SLOT - 16), SLOT, 512, streams=4, gpu=gpu)
x = np.zeros((8, 4), "<f4")
done = run_batches(backend, [slots_of([r.tobytes() for r in x]) for _ in range(6)])
backend.close()
assert len(seen) == 6 and all(all(s) for s in seen), seen
assert all((d.status == STATUS_OK).all() for d in done)
print("ok")
"""


def test_a_torch_op_runs_every_batch_on_its_lane_and_device_from_the_first() -> None:
    """A function that imports torch itself: its first batch too runs on the lane's
    stream, with the backend's device as torch's current one (where a model
    placed on "cuda" lands). The device half tells something only on a machine
    with two GPUs or more; with one, every device is 0."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    here = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", LAZY_TORCH_OP, str(here), str(here.parent)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
