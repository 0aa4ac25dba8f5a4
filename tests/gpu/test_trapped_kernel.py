"""A message that traps the kernel, on either GPU backend: the context is lost, so
the compute process dies; the message is isolated and dead-lettered, and every
other message gets its ok result."""

from __future__ import annotations

import pytest
from gpu_support import needs_gpu

from conftest import keys, send_around_poison, wait_for_results

pytestmark = [*needs_gpu, pytest.mark.timeout(900)]


@pytest.mark.parametrize("backend", ["batched", "persistent"])
def test_a_message_that_traps_the_kernel_is_isolated_and_dead_lettered(
    backend, client, queue, start_worker
) -> None:
    stream, _, dead_key = keys(queue)
    ids, poison = send_around_poison(client, stream, 2000, 2000)
    worker = start_worker("--backend", backend, "--op", "user_ops:trap_echo")
    results = wait_for_results(client, queue, 4001, worker=worker, timeout=300)
    assert set(results) == {*ids, poison} and all(len(r) == 1 for r in results.values())
    assert all(results[i][0][b"status"] == b"ok" for i in ids)
    assert results[poison][0][b"status"] == b"error"
    ((_, dead),) = client.xrange(dead_key)
    assert dead[b"src"] == poison
    restarts = worker.events("child died; restarting all children")
    assert [r["reason"] for r in restarts] == ["lost its GPU (its messages are quarantined)"] * 2
    assert worker.terminate() == 0
