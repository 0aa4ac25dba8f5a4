"""Valid sample payloads for any op, for the load generator, the demo and the tests."""

from __future__ import annotations

import numpy as np

from gpufeed.errors import ConfigError
from gpufeed.ops.base import Op

MAX_SAMPLE_BYTES = 64


def sample_payloads(op: Op, n: int, capacity: int, seed: int = 0) -> list[bytes]:
    """``n`` payloads of lengths the op accepts (at most 64 bytes and ``capacity``).

    Payloads whose length is a multiple of 4 are float32 values from a normal
    distribution, so float ops see ordinary numbers rather than NaN bit patterns.
    """
    rng = np.random.default_rng(seed)
    lens = np.arange(min(capacity, MAX_SAMPLE_BYTES) + 1, dtype=np.int64)
    valid = lens[op.valid_lengths(lens)]
    if len(valid) == 0:
        raise ConfigError(f"op {op.name!r} accepts no payload of at most {capacity} bytes")
    chosen = rng.choice(valid, size=n)
    floats = rng.standard_normal((n, MAX_SAMPLE_BYTES // 4)).astype("<f4").view(np.uint8)
    noise = rng.integers(0, 256, (n, MAX_SAMPLE_BYTES), dtype=np.uint8)
    rows = np.where((chosen % 4 == 0)[:, None], floats, noise)
    blob = rows.tobytes()
    return [
        blob[i * MAX_SAMPLE_BYTES : i * MAX_SAMPLE_BYTES + int(k)] for i, k in enumerate(chosen)
    ]
