"""``gpufeed_persistent``'s own source, built as host C++, serving a real GpuQueue for
a long run; and the host build's own checks: a kernel that breaks CUDA's warp rules,
or traps, fails instead of passing by luck.

(Every GpuQueue test in tests/unit/test_persistent_queue.py also runs against this
kernel: its ``host`` variants.)"""

from __future__ import annotations

import time

import numpy as np
import pytest
from host_device import HostKernelDevice
from host_program import build

from gpufeed.errors import NotReady
from gpufeed.gpu.persistent import GpuQueue, QueueConfig
from gpufeed.ops import Echo, OpTable
from gpufeed.packing import headers, payload_capacity

pytestmark = [pytest.mark.cuda_host, pytest.mark.timeout(600)]


def test_a_hundred_thousand_messages_each_get_their_own_result() -> None:
    n, capacity = 100_000, 1024
    config = QueueConfig(capacity=capacity, slot_bytes=64, device="emulated")
    table = OpTable([Echo()], payload_capacity(64))
    device = HostKernelDevice(table, config, blocks=4)
    rng = np.random.default_rng(3)
    lens = rng.integers(0, 49, n)
    datas = [rng.bytes(int(k)) for k in lens]
    got: list[bytes] = []
    with GpuQueue(config, table=table, device=device) as queue:
        for start in range(0, n, capacity):
            ids = queue.enqueue_batch(datas[start : start + capacity], timeout_ms=60_000)
            assert ids == list(range(start, min(start + capacity, n)))
            for msg_id in ids:
                while True:
                    try:
                        got.append(queue.try_dequeue_result(msg_id))
                        break
                    except NotReady:
                        time.sleep(0.0005)
        assert queue.stats().enq_count == queue.stats().deq_count == n
    assert got == datas  # each result with its own message, over 97 laps of the ring
    assert device.launch is not None and device.launch.why == ""


class Diverged(Echo):
    """A device function that breaks CUDA's rule: only half the warp calls __syncwarp()."""

    name = "diverged"
    cuda_function = "test_diverged"

    @property
    def cuda_source(self) -> str:
        return (
            "GPUFEED_OP(test_diverged) {\n"
            "  if (lane < 16) __syncwarp();\n"
            "  if (lane == 0) { *out.out_len = 0; *out.status = gpufeed::STATUS_OK; }\n"
            "}\n"
        )


class Trapping(Echo):
    name = "trapping"
    cuda_function = "test_trapping"

    @property
    def cuda_source(self) -> str:
        return "GPUFEED_OP(test_trapping) { if (in.len > 3) __trap(); }\n"


def requests(n: int, slot_bytes: int = 64, length: int = 8) -> np.ndarray:
    slots = np.zeros((n, slot_bytes), np.uint8)
    slots[:, 0] = length  # header len; op 0
    return slots


def test_a_kernel_that_breaks_the_warp_rules_fails_its_launch() -> None:
    program = build(OpTable([Diverged()], 48).ops)
    with pytest.raises(AssertionError, match="names lanes that have exited"):
        program.batch(requests(3))


def test_a_trap_aborts_the_launch_with_where_it_happened() -> None:
    program = build(OpTable([Trapping()], 48).ops)
    assert (headers(program.batch(requests(2, length=3)))["flags"] == 0).all()
    with pytest.raises(AssertionError, match=r"aborted: __trap\(\) in block 0, thread \d+"):
        program.batch(requests(2, length=4))
