"""A throw-away Redis Cluster on loopback, for the scale benchmark and the cluster tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType

from gpufeed.connect import slot_of
from gpufeed.embedded.server import START_TIMEOUT_S, RedisServer, free_ports
from gpufeed.errors import ProcessFailed
from gpufeed.keys import queue_key

# A cluster node's own state file lives in the node's temporary directory.
CLUSTER_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "5000",
)  # fmt: skip


class LocalCluster:
    """A throw-away Redis Cluster of ``masters`` nodes on loopback, no replicas.

    Each node gets an equal range of the 16384 hash slots (``CLUSTER
    ADDSLOTSRANGE``, Redis >= 7) and meets the first node; the cluster is
    ready when every node reports ``cluster_state:ok``.
    ``with LocalCluster(3) as cluster: cluster.url`` (a ``redis+cluster://`` URL).
    """

    SLOTS = 16384

    def __init__(
        self,
        masters: int = 3,
        *,
        binary: str | None = None,
        node_args: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        """``node_args(i)``: more server options for node ``i`` (TLS ports, …)."""
        # An explicit bus port: the default, port + 10000, fails for ports above 55535.
        ports = free_ports(2 * masters)
        self.bus_ports = ports[masters:]

        def args(i: int, bus: int) -> tuple[str, ...]:
            return (*CLUSTER_ARGS, "--cluster-port", str(bus), *(node_args(i) if node_args else ()))

        self.nodes = [
            RedisServer(binary=binary, port=port, extra_args=args(i, bus))
            for i, (port, bus) in enumerate(zip(ports[:masters], self.bus_ports, strict=True))
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def queue_per_master(self, prefix: str) -> list[str]:
        """One queue name per master, in node order: ``prefix`` plus a number,
        chosen so that the queue's hash slot falls in that master's range."""
        ranges, k = self.slot_ranges(), 0
        chosen: dict[int, str] = {}
        while len(chosen) < len(ranges):
            name = f"{prefix}{k}"
            slot = slot_of(queue_key(name, "in"))
            chosen.setdefault(
                next(i for i, (lo, hi) in enumerate(ranges) if lo <= slot <= hi), name
            )
            k += 1
        return [chosen[i] for i in range(len(ranges))]

    def slot_ranges(self) -> list[tuple[int, int]]:
        """The (first, last) hash slot each node serves, in node order: equal shares,
        the last node taking the remainder."""
        masters = len(self.nodes)
        per = self.SLOTS // masters
        return [(i * per, self.SLOTS - 1 if i == masters - 1 else (i + 1) * per - 1)
                for i in range(masters)]  # fmt: skip

    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.stop()  # no node outlives a failed start
            raise
        return self

    def _start(self) -> None:
        import redis

        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        for i, (client, (first, last)) in enumerate(zip(clients, self.slot_ranges(), strict=True)):
            client.cluster("ADDSLOTSRANGE", first, last)
            if i:
                client.cluster("MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0])
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            infos = [c.cluster("INFO") for c in clients]
            if all(
                i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(clients)
                for i in infos
            ):
                return
            time.sleep(0.05)
        raise ProcessFailed(f"the cluster did not reach cluster_state:ok in {START_TIMEOUT_S} s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for node in self.nodes:
            node.__exit__(kind, exc, tb)
