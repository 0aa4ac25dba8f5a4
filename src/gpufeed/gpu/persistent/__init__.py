"""Persistent-kernel mode: a GPU-resident ring served by a long-running kernel.

``GpuQueue`` is the host API (``enqueue``, ``enqueue_batch``,
``try_dequeue_result``, ``poll_completions``, ``stats``, ``shutdown``), the
device side is ``ops/cuda/persistent.cu`` or, without a GPU, its CPU emulation
(``QueueConfig(device="emulated")``), and ``PersistentBackend`` puts it
behind the worker's ``--backend persistent`` (``adapter.py``). CuPy is imported only when a
queue is created on a GPU.
"""

from gpufeed.gpu.persistent.config import GpuQueueStats, QueueConfig
from gpufeed.gpu.persistent.queue import GpuQueue

__all__ = ["GpuQueue", "GpuQueueStats", "QueueConfig"]
