"""Submitting messages and waiting for their results, from Python.

``Client`` (threads) and ``AsyncClient`` (asyncio) write each message with
``XADD`` to the queue's input stream, naming the client's own reply stream,
``gpufeed:{QUEUE}:reply:NAME:TAG``, as its ``reply_to``. One blocking reader per
client reads that stream and settles each message's future by the entry id
the worker echoes as ``src``. The reply stream shares the queue's hash tag,
so the worker's commit can write it on Redis Cluster too. ``close`` deletes
it.

An ``error`` result raises ``ResultError``, an ``expired`` one
``ResultExpired``; both carry the worker's reason.
"""

from gpufeed.client.aio import AsyncClient
from gpufeed.client.sync import Client

__all__ = ["AsyncClient", "Client"]
