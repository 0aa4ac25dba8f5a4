"""Starting a worker: the checks that need no Redis, the metrics directory, then the
supervisor, which runs until a stop signal."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator

from gpufeed.errors import InternalError
from gpufeed.worker.config import WorkerConfig


def check_locally(config: WorkerConfig) -> str:
    """Load the op and check that the rings fit and the backend can run here, before
    any process starts: a bad ``--op``, rings larger than /dev/shm or ``--backend
    batched`` on a machine without a GPU fail at once (``GpufeedError``) instead
    of in a restart loop (or a SIGBUS). Returns the backend name."""
    from gpufeed.gpu.select import check_backend, check_ops
    from gpufeed.ops import OpTable
    from gpufeed.packing import payload_capacity
    from gpufeed.ring import check_fences, check_shm_room, ring_bytes

    check_fences()
    rings = 2 * config.ingest_procs  # a request ring and a response ring per ingest process
    check_shm_room(rings * ring_bytes(config.ring_capacity, config.slot_bytes),
                   f"the worker's {rings} rings")  # fmt: skip

    table = OpTable.for_worker(
        config.op, payload_capacity(config.slot_bytes), dense_model=config.dense_model
    )
    # A tensor op under --backend persistent can never work: said before whether
    # this machine has a GPU, which is the lesser problem.
    check_ops(config.backend_settings.name, table)
    backend = check_backend(config.backend_settings)
    check_ops(backend, table)
    return backend


def run_worker(config: WorkerConfig, child_setup: Callable[[str], None] | None = None) -> int:
    """Serve ``config``'s queue until SIGTERM/SIGINT; the process exit code.

    ``child_setup(name)`` runs first in every child process (the CLI's logging).
    """
    with _metrics_dir(config.metrics_port > 0):
        from gpufeed.worker.supervisor import Supervisor  # after the metrics directory is set

        return Supervisor(config, child_setup=child_setup).run()


@contextlib.contextmanager
def _metrics_dir(enabled: bool) -> Iterator[None]:
    """prometheus-client's multiprocess mode needs PROMETHEUS_MULTIPROC_DIR set
    before it is first imported, here and in every child (they inherit it)."""
    if not enabled:
        yield
        return
    if "prometheus_client" in sys.modules:
        raise InternalError("prometheus_client was imported before the metrics directory was set")
    path = tempfile.mkdtemp(prefix="gpufeed-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)
