"""Persistent-kernel mode: a GPU-resident ring served by a long-running kernel.

``GpuQueue`` is the host API (the seed's ``q_init`` … ``q_shutdown``), the
device side is ``cuda/persistent.cu`` or, without a GPU, its CPU emulation
(``QueueConfig(device="emulated")``), and ``PersistentBackend`` puts it
behind the worker's ``--backend persistent``. CuPy is imported only when a
queue is created on a GPU.
"""

from gpufeed.gpu.persistent.config import QueueConfig, QueueStats
from gpufeed.gpu.persistent.queue import GpuQueue

__all__ = ["GpuQueue", "QueueConfig", "QueueStats"]
