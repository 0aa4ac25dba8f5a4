"""The reclaimer's pacing (fakeredis: our own logic, not Redis's)."""

from __future__ import annotations

import time

import fakeredis

from gpufeed.worker.config import WorkerConfig
from gpufeed.worker.reclaim import Reclaimer


def test_a_backlog_of_idle_entries_is_claimed_batch_after_batch() -> None:
    client = fakeredis.FakeRedis()
    config = WorkerConfig(queue="q", visibility_timeout_ms=1, reclaim_interval_ms=60_000)
    client.xgroup_create(config.in_key, config.group, id="0", mkstream=True)
    for i in range(150):
        client.xadd(config.in_key, {"data": str(i)})
    client.xreadgroup(config.group, "ghost", {config.in_key: ">"}, count=150)  # then it died
    time.sleep(0.01)
    reclaimer = Reclaimer(client, config, "me")
    reclaimer.last -= 61  # the interval has passed once
    claimed = []
    while reclaimer.due():
        entries, dead = reclaimer.claim(64)
        assert not dead
        claimed += [entry_id for entry_id, _ in entries]
    # 64 + 64 + 22: each full claim is followed at once by the next, not after an interval
    assert len(claimed) == len(set(claimed)) == 150
    assert not reclaimer.due()  # the last claim was short: back to the interval
