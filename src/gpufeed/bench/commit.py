"""``gpufeed bench commit``: the commit script against the floor's Lua call, on Redis alone.

``bench e2e`` cannot resolve a fraction of a microsecond in the script: on a
small machine, the producer and the worker's processes move Redis's CPU per
message by more than that from run to run. Here both scripts run on one fresh
embedded server with nothing else on it, on the same batches:

* gpufeed: the worker's ``Committer`` (the commit script, with its ranged
  ``XPENDING`` ownership check), as the ingest process calls it;
* the floor: the Lua call of ``bench e2e``'s floor loop, one ``XADD`` per
  entry and one ``XACK``.

Before each call one consumer reads ``batch + held`` fresh entries: the call
commits the first ``batch`` while ``held`` more stay pending, as entries in a
worker's ring do. The time is Redis's own (``INFO commandstats``, the
``EVALSHA`` call's microseconds) per entry; the two alternate, medians reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from gpufeed.bench import median, server_label
from gpufeed.bench.e2e import FLOOR_LUA
from gpufeed.embedded import RedisServer
from gpufeed.errors import InternalError
from gpufeed.packing import ResultEntry, Status
from gpufeed.worker.commit import Committer
from gpufeed.worker.config import WorkerConfig


@dataclass(frozen=True)
class CommitBenchConfig:
    batch: int = 400
    held: int = 3600
    calls: int = 60
    payload_bytes: int = 64


def _read_fresh(client: redis.Redis, stream: str, group: str, cfg: CommitBenchConfig) -> list[Any]:
    """A new stream of ``batch + held`` entries, all read by consumer ``c``."""
    client.delete(stream)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for _ in range(cfg.batch + cfg.held):
        pipe.xadd(stream, {"data": bytes(cfg.payload_bytes)})
    pipe.execute()
    reply: Any = client.xreadgroup(group, "c", {stream: ">"}, count=cfg.batch + cfg.held)
    return list(reply[0][1][: cfg.batch])


def _script_us(client: redis.Redis) -> float:
    stats: Any = client.info("commandstats")
    return float(stats["cmdstat_evalsha"]["usec"])


def run(cfg: CommitBenchConfig) -> dict[str, float | int | str]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        server_name = server_label(client)
        config = WorkerConfig(queue="bench-commit", out_maxlen=0)
        ours = Committer(client, config, "c")
        ours.load()
        floor = client.register_script(FLOOR_LUA)
        floor.sha = client.script_load(FLOOR_LUA)  # no NOSCRIPT round in the first call
        floor_keys = ["floor:in", "floor:out"]
        ours_us, floor_us = [], []
        for _ in range(cfg.calls):
            entries = _read_fresh(client, config.in_key, config.group, cfg)
            results = [ResultEntry(entry_id, Status.OK, f[b"data"]) for entry_id, f in entries]
            client.config_resetstat()
            answered = ours.commit(results).answered
            ours_us.append(_script_us(client) / cfg.batch)
            if answered != cfg.batch:
                raise InternalError(f"the commit script answered {answered} of {cfg.batch}")

            entries = _read_fresh(client, floor_keys[0], "floor", cfg)
            args = [x for entry_id, f in entries for x in (entry_id, f[b"data"])]
            client.config_resetstat()
            floor(keys=floor_keys, args=args)
            floor_us.append(_script_us(client) / cfg.batch)
            client.delete(config.out_key, floor_keys[1])
    commit_us, base_us = median(ours_us), median(floor_us)
    return {
        "server": server_name,
        "batch": cfg.batch,
        "held": cfg.held,
        "calls": cfg.calls,
        "commit_us_per_entry": round(commit_us, 3),
        "floor_us_per_entry": round(base_us, 3),
        "ratio_vs_floor": round(base_us / commit_us, 3),
    }
