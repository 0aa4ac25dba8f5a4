"""The quarantine's bookkeeping across compute-process restarts (a file, replayed)."""

from __future__ import annotations

import time

import numpy as np

from gpufeed.ops import OpTable
from gpufeed.packing import pack
from gpufeed.worker import quarantine as q
from gpufeed.worker.quarantine import Quarantine, digests

SLOT = 64


def slots(*datas: bytes) -> np.ndarray:
    table = OpTable.for_worker("echo", SLOT - 16)
    out = np.zeros((len(datas), SLOT), np.uint8)
    entries = [(f"1-{i}".encode(), {b"data": d}) for i, d in enumerate(datas)]
    pack(entries, out, table=table, first_seq=0, now_ms=0)
    return out


def test_digests_name_the_message_not_its_slot_or_sequence_number() -> None:
    a, b = slots(b"one", b"two"), slots(b"zero", b"one")
    assert digests(a)[0] == digests(b)[1]  # same payload, other seq and position
    assert len(set(digests(slots(b"one", b"two", b"one\x00")))) == 3
    b[1, 16 + 3] = 7  # a byte past the payload's length is not part of it
    assert digests(a)[0] == digests(b)[1]


def test_a_suspect_that_ran_alone_and_took_the_process_down_is_poison(tmp_path) -> None:
    path = tmp_path / "quarantine"
    first = Quarantine(path)
    assert not first.active
    assert first.add_suspects([slots(b"fine", b"poison")], reason="CUDA error 719") == 2
    fine, poison = digests(slots(b"fine", b"poison"))

    second = Quarantine(path)  # the next compute process
    assert set(second.suspects) == {fine, poison} and not second.poison
    second.trying(fine)
    second.cleared(fine)
    second.trying(poison)  # ... and the process dies here

    third = Quarantine(path)
    assert not third.suspects
    assert third.poison == {poison: "CUDA error 719"}
    third.answered(poison)
    assert not Quarantine(path).active


def test_old_suspects_are_forgotten_and_the_file_stays_small(tmp_path, monkeypatch) -> None:
    path = tmp_path / "quarantine"
    Quarantine(path).add_suspects([slots(*[b"m%d" % i for i in range(50)])], reason="lost")
    assert len(Quarantine(path).suspects) == 50
    later = time.time() + q.SUSPECT_TTL_S + 1
    monkeypatch.setattr(q.time, "time", lambda: later)
    assert not Quarantine(path).active
    assert path.read_text() == ""


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path) -> None:
    path = tmp_path / "quarantine"
    Quarantine(path).add_suspects([slots(b"x")], reason="lost")
    with path.open("a") as f:
        f.write("trying abc")  # no time: the write was cut short
    assert len(Quarantine(path).suspects) == 1 and not Quarantine(path).poison


def test_poison_answered_elsewhere_expires_across_restarts_and_in_a_running_process(
    tmp_path, monkeypatch
) -> None:
    """A poison message dead-lettered by another path (the reclaimer) never comes back
    to be answered here; it must still be forgotten, or every batch of every later
    compute process runs one message at a time."""
    path = tmp_path / "quarantine"
    now = [1_000_000.0]
    monkeypatch.setattr(q.time, "time", lambda: now[0])
    Quarantine(path).add_suspects([slots(b"poison")], reason="lost")
    (poison,) = digests(slots(b"poison"))
    Quarantine(path).trying(poison)  # ... and the process died: it is poison now
    for _ in range(3):  # restarts well inside the time-to-live keep it
        now[0] += q.SUSPECT_TTL_S / 4
        running = Quarantine(path)
        assert running.poison == {poison: "lost"} and running.active
    now[0] += q.SUSPECT_TTL_S / 2  # past it, counted from when it was suspected
    assert not running.active  # in the running process, at its next batch
    assert not Quarantine(path).active  # and in the next one
