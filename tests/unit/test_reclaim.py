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


def test_an_entry_delivered_too_often_is_answered_where_packing_would_answer_it() -> None:
    """Its result goes to its reply_to stream only if packing would accept that stream:
    never into the queue's own input stream, where it would be read as a message."""
    client = fakeredis.FakeRedis()
    config = WorkerConfig(queue="q", visibility_timeout_ms=1, max_deliveries=1)
    client.xgroup_create(config.in_key, config.group, id="0", mkstream=True)
    good = client.xadd(config.in_key, {"data": "a", "cid": "c1", "reply_to": "gpufeed:{q}:r"})
    bad = client.xadd(config.in_key, {"data": "b", "cid": "c2", "reply_to": config.in_key})
    client.xreadgroup(config.group, "ghost", {config.in_key: ">"}, count=2)
    time.sleep(0.01)
    in_key = config.in_key.encode()
    reclaimer = Reclaimer(client, config, "me", lambda r: "its own" if r == in_key else None)
    reclaimer.last -= config.reclaim_interval_ms / 1000 + 1
    entries, dead = reclaimer.claim(10)
    assert entries == []
    by_src = {d.src: d for d in dead}
    assert (by_src[good].cid, by_src[good].reply_to) == (b"c1", b"gpufeed:{q}:r")
    assert (by_src[bad].cid, by_src[bad].reply_to) == (b"c2", None)  # on the output stream
    assert b"not answered on reply_to: its own" in by_src[bad].body
    assert all(b"more than --max-deliveries 1" in d.body for d in dead)
