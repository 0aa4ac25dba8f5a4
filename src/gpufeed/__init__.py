"""gpufeed: a Redis-fed GPU batch worker.

Producers ``XADD`` messages to a Redis stream; gpufeed reads them through a
consumer group, packs them into fixed-size slots, runs a kernel over whole
batches (CUDA via CuPy, or NumPy without a GPU) and writes exactly one result
per message back to Redis.
"""

from typing import Any

from gpufeed.errors import ClientClosed, GpufeedError, ReplyRefused, ResultError, ResultExpired

__version__ = "0.1.0"
__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosed",
    "GpufeedError",
    "ReplyRefused",
    "ResultError",
    "ResultExpired",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The clients load redis-py; ``gpufeed --help`` and the worker's processes
    # import this package without needing them.
    if name in ("Client", "AsyncClient"):
        import gpufeed.client

        return getattr(gpufeed.client, name)
    raise AttributeError(f"module 'gpufeed' has no attribute {name!r}")
