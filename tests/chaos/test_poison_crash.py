"""An entry whose handling kills a child process outright (a native crash: nothing to
catch) is found by the supervisor's crash log and dead-lettered, alone, after three
restarts; everything else is answered once (worker/crashlog.py)."""

from __future__ import annotations

import time

import pytest
from report import Row, record

from conftest import keys, wait_for_results
from gpufeed.loadgen.produce import xadd_all

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


def test_an_entry_that_keeps_killing_the_worker_is_dead_lettered_after_three_crashes(
    client, queue, start_worker
) -> None:
    """A native crash leaves nothing to catch: the supervisor's crash log makes the
    entries pending at two crashes in a row suspects, runs each alone, and convicts
    the one running when the third crash came (worker/crashlog.py)."""
    stream, _, dead_key = keys(queue)
    before = xadd_all(client, stream, [b"b%d" % i for i in range(150)])
    poison = client.xadd(stream, {"data": b"segv pill"})
    after = xadd_all(client, stream, [b"a%d" % i for i in range(150)])
    worker = start_worker("--op", "user_ops:segv_echo", "--max-batch", "64",
                          "--log-format", "json")  # fmt: skip
    started = time.monotonic()
    results = wait_for_results(client, queue, 301, worker=worker, timeout=180)
    assert set(results) == {*before, poison, *after}
    assert all(len(r) == 1 for r in results.values()), "one result each"
    assert all(results[i][0][b"status"] == b"ok" for i in before + after)
    error = results[poison][0][b"error"]
    assert results[poison][0][b"status"] == b"error"
    assert b"died 3 times while this entry was pending" in error
    assert b"killed by SIGSEGV" in error
    assert [f[b"src"] for _, f in client.xrange(dead_key)] == [poison]
    restarts = worker.events("child died; restarting all children")
    lost = sum(1 for i in [*before, poison, *after] if i not in results)
    record(Row("an entry that kills the compute process (SIGSEGV) each time it runs",
               301, lost, sum(len(r) - 1 for r in results.values()),
               time.monotonic() - started,
               f"{len(restarts)} restarts, then it alone was dead-lettered"))  # fmt: skip
    assert [r["reason"] for r in restarts] == ["killed by SIGSEGV"] * 3
    assert worker.terminate() == 0
