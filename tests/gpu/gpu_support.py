"""What the GPU tests share: the skip when there is no device, and message builders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from gpufeed.gpu.select import cuda_devices
from gpufeed.ops import Op
from gpufeed.packing import write_requests

# The integration tests' helpers (user_ops, test_worker) are shared with these.
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

DEVICES, WHY = cuda_devices()
needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICES == 0, reason=f"no CUDA device ({WHY})"),
]


def random_slots(
    op: Op, op_id: int, n: int, slot_bytes: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` request slots of random valid lengths for ``op``, the longest one included."""
    capacity = slot_bytes - 16
    lens = np.arange(capacity + 1, dtype=np.int64)
    valid = lens[op.valid_lengths(lens)]
    chosen = rng.choice(valid, size=n)
    chosen[0] = valid.max()
    # Float ops get ordinary numbers; bytes stay bytes.
    rows = rng.standard_normal((n, (capacity + 3) // 4)).astype("<f4").view(np.uint8)
    datas = [rows[i, : int(k)].tobytes() for i, k in enumerate(chosen)]
    slots = np.zeros((n, slot_bytes), np.uint8)
    write_requests([slots], datas, chosen, np.full(n, op_id, np.uint16), first_seq=0)
    return slots
