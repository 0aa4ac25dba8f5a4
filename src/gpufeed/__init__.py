"""gpufeed: a Redis-fed GPU batch worker.

Producers ``XADD`` messages to a Redis stream; gpufeed reads them through a
consumer group, packs them into fixed-size slots, runs a kernel over whole
batches (CUDA via CuPy, or NumPy without a GPU) and writes exactly one result
per message back to Redis.
"""

__version__ = "0.1.0"
