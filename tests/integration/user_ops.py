"""Ops the integration tests load into real workers with --op user_ops:NAME."""

from __future__ import annotations

import ctypes
import time

import numpy as np

from gpufeed.errors import DeviceLost
from gpufeed.ops import Echo, Tensor, TensorOp


class SlowEcho(Echo):
    """Echo that takes 20 ms per batch: a compute stage slower than Redis."""

    name = "slow_echo"
    seconds = 0.02

    def cpu(self, payloads, lens):
        time.sleep(self.seconds)
        return self.reference(payloads, lens)


class ModelPaced(SlowEcho):
    """Echo that takes 100 ms per batch, as a model on the CPU does."""

    name = "model_paced"
    seconds = 0.1


class PoisonAware(Echo):
    """Echo that raises on any batch holding a payload starting with b"poison"."""

    name = "poison_echo"

    def cpu(self, payloads, lens):
        if (payloads[:, :6] == np.frombuffer(b"poison", np.uint8)).all(axis=1).any():
            raise RuntimeError("poisoned batch")
        return self.reference(payloads, lens)


slow_echo = SlowEcho()
model_paced = ModelPaced()
poison_echo = PoisonAware()


POISON = b"poison"


class TrapEcho(Echo):
    """Echo that takes the GPU down on a payload starting with b"poison".

    On the device it executes ``__trap()``, which leaves the CUDA context
    unusable. On the CPU it raises ``DeviceLost``, which is what the GPU
    backends raise after such a trap, so the quarantine path (compute exits,
    the supervisor restarts it, the poison is isolated) runs without a GPU.
    """

    name = "trap_echo"
    cuda_function = "gpufeed_test_trap_echo"

    def cpu(self, payloads, lens):
        if (payloads[:, :6] == np.frombuffer(POISON, np.uint8)).all(axis=1).any():
            raise DeviceLost("emulated: a kernel trapped (CUDA error 719: launch failure)")
        return self.reference(payloads, lens)

    @property
    def cuda_source(self):
        return r"""
GPUFEED_OP(gpufeed_test_trap_echo) {
  (void)params;
  const char* poison = "poison";
  bool bad = in.len >= 6;
  for (int i = 0; i < 6 && bad; ++i) bad = in.payload[i] == static_cast<uint8_t>(poison[i]);
  if (bad) __trap();
  for (uint32_t i = lane; i < in.len; i += lanes) out.out[i] = in.payload[i];
  if (lane == 0) {
    *out.out_len = in.len;
    *out.status = gpufeed::STATUS_OK;
  }
}
"""


trap_echo = TrapEcho()


class FragileLengths(Echo):
    """Echo whose length check raises on a 13-byte payload: user code that fails on
    one message while the worker packs it (before any compute)."""

    name = "fragile_lengths"

    def valid_lengths(self, lens):
        start_up_check = len(lens) > 1 and (lens == np.arange(len(lens))).all()  # every length
        if (lens == 13).any() and not start_up_check:
            raise ValueError("13 is unlucky")
        return lens >= 0


fragile_lengths = FragileLengths()


class Segfaulting(Echo):
    """Echo that crashes its process outright on a payload starting with b"segv": a
    native crash, with no exception to catch (the compute process dies of SIGSEGV)."""

    name = "segv_echo"

    def cpu(self, payloads, lens):
        if (payloads[:, :4] == np.frombuffer(b"segv", np.uint8)).all(axis=1).any():
            ctypes.string_at(0)  # reads address 0
        return self.reference(payloads, lens)


segv_echo = Segfaulting()


def _double(x):
    return x * 2


# A tensor op: four float32 in, the same doubled out (tests/integration/test_client.py).
double = TensorOp("double", _double, Tensor("float32", (4,)), Tensor("float32", (4,)))
