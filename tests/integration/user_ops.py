"""Ops the integration tests load into real workers with --op user_ops:NAME."""

from __future__ import annotations

import time

import numpy as np

from gpufeed.gpu.ops import Echo


class SlowEcho(Echo):
    """Echo that takes 20 ms per batch: a compute stage slower than Redis."""

    name = "slow_echo"

    def cpu(self, payloads, lens):
        time.sleep(0.02)
        return self.reference(payloads, lens)


class PoisonAware(Echo):
    """Echo that raises on any batch holding a payload starting with b"poison"."""

    name = "poison_echo"

    def cpu(self, payloads, lens):
        if (payloads[:, :6] == np.frombuffer(b"poison", np.uint8)).all(axis=1).any():
            raise RuntimeError("poisoned batch")
        return self.reference(payloads, lens)


slow_echo = SlowEcho()
poison_echo = PoisonAware()
