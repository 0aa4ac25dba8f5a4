"""Private Redis-compatible servers started on loopback: one (``RedisServer``) or a
cluster (``LocalCluster``). For ``gpufeed demo``, the benchmarks and the tests;
a worker never starts one."""

from gpufeed.embedded.cluster import LocalCluster
from gpufeed.embedded.server import RedisServer, find_server_binary, free_port, free_ports

__all__ = ["LocalCluster", "RedisServer", "find_server_binary", "free_port", "free_ports"]
