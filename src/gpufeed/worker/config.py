"""Worker settings and the Redis keys they imply."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from gpufeed.errors import ConfigError
from gpufeed.ring._layout import is_power_of_two
from gpufeed.worker.connect import RedisTarget


def queue_key(queue: str, name: str) -> str:
    """The key ``gpufeed:{QUEUE}:NAME`` (in, out, dead, reply:..., or a * pattern).

    Every key of a queue carries the hash tag {QUEUE}, so on Redis Cluster they
    live in one slot and the commit script may touch all of them.
    """
    return f"gpufeed:{{{queue}}}:{name}"


BACKENDS = ("auto", "cpu", "batched", "persistent")
STAGINGS = ("pinned", "registered")
PERSISTENT_PAYLOADS = ("mapped", "device")
# Lua's unpack() takes at most ~8000 values; one XACK per batch must stay below.
MAX_BATCH = 4096


@dataclass(frozen=True)
class WorkerConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "default"
    op: str = "echo"
    backend: str = "auto"
    ingest_procs: int = 1
    max_batch: int = 1024
    max_wait_ms: int = 5
    slot_bytes: int = 256
    ring_capacity: int = 4096
    visibility_timeout_ms: int = 30_000
    max_deliveries: int = 5
    delete_acked: bool = False
    drain_timeout_s: float = 30.0
    group: str = "gpufeed"
    consumer: str = ""  # default: the host name; ingest process i uses "<consumer>-<i>"
    start_id: str = "0"
    out_maxlen: int = 1_000_000  # MAXLEN ~ for result and dead-letter streams; 0: unbounded
    reclaim_interval_ms: int = 1000
    dense_model: str | None = None
    cuda_streams: int = 4
    device: int = 0  # CUDA device ordinal for the GPU backends
    staging: str = "pinned"  # batched: "pinned" staging buffers or "registered" request rings
    persistent_payload: str = "mapped"  # persistent: requests in "mapped" host or "device" memory
    emulate_device: bool = False  # persistent: the device side as a CPU thread (no GPU needed)
    metrics_port: int = 0  # Prometheus endpoint of the supervisor; 0: none
    metrics_host: str = "0.0.0.0"
    tls_ca_cert: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"--{name.replace('_', '-')}: {why}")

        if self.backend not in BACKENDS:
            raise bad("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.emulate_device and self.backend != "persistent":
            raise bad("emulate_device", "only --backend persistent has a CPU emulation")
        if not 1 <= self.cuda_streams <= 64 or self.device < 0:
            raise bad("cuda_streams", "must be between 1 and 64, and --device >= 0")
        if self.staging not in STAGINGS:
            raise bad("staging", f"must be one of {', '.join(STAGINGS)}")
        if self.persistent_payload not in PERSISTENT_PAYLOADS:
            raise bad("persistent_payload", f"must be one of {', '.join(PERSISTENT_PAYLOADS)}")
        if not 0 <= self.metrics_port <= 65535:
            raise bad("metrics_port", "must be a TCP port, or 0 for no metrics endpoint")
        if not 1 <= self.ingest_procs <= 64:
            raise bad("ingest_procs", "must be between 1 and 64")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise bad("max_batch", f"must be between 1 and {MAX_BATCH}")
        if not is_power_of_two(self.slot_bytes) or self.slot_bytes < 64:
            raise bad("slot_bytes", "must be a power of two >= 64")
        if not is_power_of_two(self.ring_capacity) or self.ring_capacity < self.max_batch:
            raise bad("ring_capacity", "must be a power of two >= --max-batch")
        if self.max_wait_ms < 0 or self.visibility_timeout_ms < 1 or self.max_deliveries < 1:
            raise bad("max_wait_ms", "timeouts must be positive and max-deliveries >= 1")
        if not self.queue or any(c in self.queue for c in "{} "):
            raise bad("queue", "must be non-empty without braces or spaces")
        if self.out_maxlen < 0:
            raise bad("out_maxlen", "must be >= 0")
        self.redis  # noqa: B018 -- validates the URL and TLS options

    @property
    def redis(self) -> RedisTarget:
        """Where the queue lives and how to connect."""
        return RedisTarget(self.redis_url, self.tls_ca_cert, self.tls_cert, self.tls_key)

    @property
    def in_key(self) -> str:
        return queue_key(self.queue, "in")

    @property
    def out_key(self) -> str:
        return queue_key(self.queue, "out")

    @property
    def dead_key(self) -> str:
        return queue_key(self.queue, "dead")

    def consumer_name(self, index: int) -> str:
        return f"{self.consumer or socket.gethostname()}-{index}"
