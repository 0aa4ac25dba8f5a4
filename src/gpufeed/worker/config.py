"""The worker's settings: one frozen dataclass, checked when made.

Each field carries its help text (``setting``): the ``gpufeed worker`` options,
their ``GPUFEED_*`` environment variables and their defaults are generated from
these fields, so the list of settings exists once.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpufeed.errors import ConfigError
from gpufeed.keys import MAX_LEVELS, QueueKeys

if TYPE_CHECKING:
    from gpufeed.connect import RedisTarget
    from gpufeed.gpu.select import BackendSettings
    from gpufeed.packing import ReplyToCheck

# Lua's unpack() takes at most ~8000 values; one XACK per batch must stay below.
MAX_BATCH = 4096


# The longest --max-queue-delay-us, and how long `auto` waits at most.
MAX_QUEUE_DELAY_US = 1_000_000
AUTO_DELAY_CAP_US = 100_000


@dataclass(frozen=True)
class QueueDelay:
    """How long the ingest process may hold a small batch back while the device idles."""

    auto: bool
    us: int  # the fixed wait, or auto's cap


def setting(default: Any, help_text: str, *, flag: str | None = None) -> Any:
    """A settings field: its default and the help its option shows (cli/options.py).

    ``flag`` overrides the option's name, for a boolean with two spellings
    (``--delete-acked/--keep-acked``).
    """
    return field(default=default, metadata={"help": help_text, "flag": flag})


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``gpufeed worker`` takes. ``consumer`` empty means the host name;
    ingest process ``i`` reads as ``<consumer>-<i>``."""

    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "redis://, rediss:// (TLS), redis+cluster:// or rediss+cluster:// (any cluster node).",
    )
    tls_ca_cert: str | None = setting(None, "CA certificates that sign the server's (rediss://).")
    tls_cert: str | None = setting(None, "Client certificate, for servers that check clients.")
    tls_key: str | None = setting(None, "The client certificate's private key.")
    queue: str = setting("default", "Queue name: streams gpufeed:{NAME}:in/out/dead.")
    op: str = setting("echo", "Op: a built-in, an entry point, or package.module:attribute.")
    backend: str = setting("auto", "auto, cpu, batched or persistent.")
    ingest_procs: int = setting(1, "Ingest processes (Redis I/O).")
    max_batch: int = setting(1024, "Most messages per batch.")
    max_wait_ms: int = setting(5, "XREADGROUP BLOCK when idle, ms.")
    priorities: int = setting(
        1, "Priority levels: streams in (level 0), in:1 ... in:N-1; higher is served first."
    )
    lowest_share: float = setting(
        0.05, "Share of each batch kept for lower priority levels that have a backlog."
    )
    max_queue_delay_us: str = setting(
        "0",
        "With the device idle, wait up to this long for a fuller batch; auto: a cost "
        "model decides.",
    )
    shed_late: bool = setting(
        True,
        "Answer expired, without compute, a message the cost model says will miss its deadline_ms.",
        flag="--shed-late/--no-shed-late",
    )
    slot_bytes: int = setting(256, "Slot size (power of two >= 64).")
    ring_capacity: int = setting(4096, "Slots per ring.")
    visibility_timeout_ms: int = setting(30_000, "Idle time before XAUTOCLAIM takes an entry over.")
    max_deliveries: int = setting(5, "Deliveries before an entry is dead-lettered.")
    delete_acked: bool = setting(
        False, "XDEL input entries once answered.", flag="--delete-acked/--keep-acked"
    )
    drain_timeout_s: float = setting(30.0, "Seconds to finish in-flight work on SIGTERM.")
    group: str = setting("gpufeed", "Consumer group name.")
    consumer: str = setting("", "Consumer name prefix (default: host name).")
    start_id: str = setting("0", "Where a new group starts: 0 (all) or $ (new only).")
    out_maxlen: int = setting(1_000_000, "MAXLEN ~ for result and dead-letter streams (0: none).")
    reclaim_interval_ms: int = setting(1000, "How often idle entries are looked for, ms.")
    dense_model: str | None = setting(None, "W/b .npz for the dense op.")
    metrics_port: int = setting(0, "Serve Prometheus metrics on this port (0: off).")
    metrics_host: str = setting("0.0.0.0", "Address the metrics endpoint listens on.")
    device: int = setting(0, "CUDA device for the GPU backends.")
    cuda_streams: int = setting(4, "batched: CUDA streams, one batch in flight on each.")
    staging: str = setting(
        "pinned", "batched: copy requests via pinned buffers, or DMA from registered rings."
    )
    persistent_payload: str = setting(
        "mapped", "persistent: requests in mapped host memory or device memory."
    )
    emulate_device: bool = setting(
        False,
        "persistent: run the device side as a CPU thread (tests; no GPU needed).",
        flag="--emulate-device/--no-emulate-device",
    )

    ring_spin: int = setting(
        200, "Checks a ring side makes before it sleeps, while recent waits were short."
    )
    trace_timings: bool = setting(
        False,
        "Log each batch's stage timestamps, many batches to a line (gpufeed bench latency).",
        flag="--trace-timings/--no-trace-timings",
    )

    def __post_init__(self) -> None:
        # Imported here, not above: the CLI reads this class's fields to build its
        # options, and ``gpufeed --help`` should not wait for Redis, NumPy and CUDA code.
        from gpufeed.ring import is_power_of_two

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"--{name.replace('_', '-')}: {why}")

        self.backend_settings  # noqa: B018 -- checks the backend's options
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
        if self.out_maxlen < 0:
            raise bad("out_maxlen", "must be >= 0")
        if not 1 <= self.priorities <= min(MAX_LEVELS, self.max_batch):
            raise bad("priorities", f"must be between 1 and {MAX_LEVELS}, and at most --max-batch")
        if not 0 <= self.lowest_share < 1:
            raise bad("lowest_share", "must be at least 0 and below 1")
        self.queue_delay  # noqa: B018 -- checks --max-queue-delay-us
        if self.ring_spin < 0:
            raise bad("ring_spin", "must be >= 0")
        if self.reclaim_interval_ms < 1:
            raise bad("reclaim_interval_ms", "must be >= 1")
        self.keys  # noqa: B018 -- checks the queue name
        self.redis  # noqa: B018 -- checks the URL and TLS options

    @property
    def redis(self) -> RedisTarget:
        """Where the queue lives and how to connect."""
        from gpufeed.connect import RedisTarget

        return RedisTarget(self.redis_url, self.tls_ca_cert, self.tls_cert, self.tls_key)

    def reply_to_check(self) -> ReplyToCheck:
        """Why a ``reply_to`` stream cannot be used: the queue's own input or dead-letter
        stream (a result written there would be read as a message, or as a dead
        letter), a consumer-name lease key (a stream there would keep workers from
        starting), or, on a cluster, a stream in another hash slot than the queue's
        (the commit script writes every stream in one call)."""
        from gpufeed.connect import cluster_reply_check  # here: settings load without redis

        own = {k.encode(): "input" for k in self.level_keys}
        own[self.dead_key.encode()] = "dead-letter"
        leases = self.keys.lease_key("").encode()
        cluster = cluster_reply_check(self.in_key) if self.redis.cluster else None

        def check(reply_to: bytes) -> str | None:
            kind = own.get(reply_to)
            if kind is not None:
                return f"reply_to names the queue's own {kind} stream"
            if reply_to.startswith(leases):
                return "reply_to names a key of the queue's consumer-name leases"
            return cluster(reply_to) if cluster is not None else None

        return check

    @property
    def queue_delay(self) -> QueueDelay:
        """``--max-queue-delay-us``: a fixed wait in microseconds, or ``auto``."""
        text = self.max_queue_delay_us.strip().lower()
        if text == "auto":
            return QueueDelay(auto=True, us=AUTO_DELAY_CAP_US)
        if not text.isdigit() or int(text) > MAX_QUEUE_DELAY_US:
            raise ConfigError(
                f"--max-queue-delay-us: 0 to {MAX_QUEUE_DELAY_US} microseconds, or auto; "
                f"got {self.max_queue_delay_us!r}"
            )
        return QueueDelay(auto=False, us=int(text))

    @property
    def level_keys(self) -> list[str]:
        """The input streams, one per priority level, lowest (``in``) first."""
        return self.keys.level_keys(self.priorities)

    @property
    def keys(self) -> QueueKeys:
        return QueueKeys(self.queue)

    @property
    def backend_settings(self) -> BackendSettings:
        from gpufeed.gpu.select import BackendSettings

        return BackendSettings(
            self.backend, self.device, self.cuda_streams, self.staging,
            self.persistent_payload, self.emulate_device,
        )  # fmt: skip

    @property
    def in_key(self) -> str:
        return self.keys.in_key

    @property
    def out_key(self) -> str:
        return self.keys.out_key

    @property
    def dead_key(self) -> str:
        return self.keys.dead_key

    @property
    def consumer_prefix(self) -> str:
        """The worker's consumer name (``--consumer``, or the host name)."""
        return self.consumer or socket.gethostname()

    def consumer_name(self, index: int) -> str:
        return f"{self.consumer_prefix}-{index}"
