"""The crash log's bookkeeping: which pending entries become suspects, which suspect
is convicted, and what each ingest process is told (worker/crashlog.py)."""

from __future__ import annotations

import time

import pytest

from gpufeed.worker.crashlog import SUSPECT_AFTER, CrashLog, CrashLogState, Trials


def test_an_entry_pending_at_two_crashes_in_a_row_is_a_suspect_of_its_consumer(tmp_path):
    log = CrashLog(tmp_path / "entries")
    log.record_crash({b"1-0": "host-0", b"1-1": "host-0", b"1-2": "host-1"}, "killed by SIGSEGV")
    assert CrashLogState.read(log.path).suspects == {}  # one crash tells nothing apart
    # 1-0 was answered in between; 1-3 is new
    log.record_crash({b"1-1": "host-0", b"1-2": "host-1", b"1-3": "host-1"}, "killed by SIGSEGV")
    assert SUSPECT_AFTER == 2
    assert CrashLogState.read(log.path).suspects == {b"1-1": "host-0", b"1-2": "host-1"}
    assert Trials(log.path, "host-0").mine == [b"1-1"]
    assert Trials(log.path, "host-1").mine == [b"1-2"]
    assert Trials(log.path, "host-2").pending  # the others' suspects hold it back too


def test_a_suspect_that_was_running_alone_when_the_children_died_is_poison(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    pending = {b"1-1": "host-0", b"1-2": "host-0", b"1-3": "host-0"}
    log.record_crash(pending, "killed by SIGSEGV")
    log.record_crash(pending, "killed by SIGSEGV")
    trials = Trials(log.path, "host-0")
    with trials.alone(b"1-1"):
        pass  # its result was committed: cleared
    with trials.alone(b"1-2"):
        log.record_crash({b"1-2": "host-0", b"1-3": "host-0"}, "killed by SIGSEGV")
    state = CrashLogState.read(log.path)
    assert list(state.poison) == [b"1-2"]
    assert "died 3 times while this entry was pending, the last time while it was " \
           "handled alone (killed by SIGSEGV)" in state.poison[b"1-2"]  # fmt: skip
    assert state.suspects == {b"1-3": "host-0"}  # not yet run alone: it still will be
    next_one = Trials(log.path, "host-0")
    assert next_one.poison.keys() == {b"1-2"} and next_one.mine == [b"1-3"]
    next_one.answered(b"1-2")
    assert Trials(log.path, "host-0").poison == {}
    log.record_crash({}, "killed by SIGKILL")  # answered poison is not carried over
    assert CrashLogState.read(log.path).poison == {}


def test_waiting_for_the_others_ends_when_every_suspect_has_run(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    for _ in range(2):
        log.record_crash({b"1-1": "host-0", b"2-1": "host-1"}, "exit code 1")
    mine, theirs = Trials(log.path, "host-0"), Trials(log.path, "host-1")
    with mine.alone(b"1-1"):
        pass
    with theirs.alone(b"2-1"):
        pass
    mine.wait_for_the_others(timeout_s=5)
    assert not mine.pending
    assert CrashLogState.read(log.path).unresolved == set()


def test_a_trial_given_up_on_an_exception_convicts_nobody(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    pending = {b"1-1": "host-0"}
    log.record_crash(pending, "killed by SIGSEGV")
    log.record_crash(pending, "killed by SIGSEGV")
    trials = Trials(log.path, "host-0")
    with pytest.raises(ConnectionError), trials.alone(b"1-1", given_up_on=(ConnectionError,)):
        raise ConnectionError("redis went away mid-trial")
    assert CrashLogState.read(log.path).unresolved == {b"1-1"}  # it runs again
    assert trials.mine == [b"1-1"]
    log.record_crash(pending, "killed by SIGSEGV")  # a crash after the trial was given up
    state = CrashLogState.read(log.path)
    assert state.poison == {} and state.suspects == {b"1-1": "host-0"}


def test_a_cleared_suspect_leaves_the_list_of_those_still_to_run(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    for _ in range(2):
        log.record_crash({b"1-1": "host-0", b"1-2": "host-0"}, "killed by SIGSEGV")
    trials = Trials(log.path, "host-0")
    with trials.alone(b"1-1"):
        pass
    assert trials.mine == [b"1-2"]


def test_one_ingest_process_dying_leaves_the_others_counts_and_suspects(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    both = {b"1-1": "host-0", b"2-1": "host-1"}
    log.record_crash(both, "killed by SIGSEGV", ["host-0", "host-1"])  # compute died
    log.record_crash(both, "killed by SIGSEGV", ["host-0", "host-1"])
    assert CrashLogState.read(log.path).suspects == both
    # ingest 1 died alone: host-0's pending entries were not asked for, nor involved
    log.record_crash({b"2-1": "host-1"}, "exit code 1", ["host-1"])
    state = CrashLogState.read(log.path)
    assert state.suspects == both
    assert b"1-1 host-0 2" in log.path.read_bytes() and b"2-1 host-1 3" in log.path.read_bytes()


def test_poison_answered_elsewhere_is_forgotten_at_the_next_crash(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    pending = {b"1-1": "host-0"}
    for _ in range(2):
        log.record_crash(pending, "killed by SIGSEGV")
    with Trials(log.path, "host-0").alone(b"1-1"):
        log.record_crash(pending, "killed by SIGSEGV")
    assert CrashLogState.read(log.path).poison.keys() == {b"1-1"}
    log.record_crash({b"2-2": "host-1"}, "killed by SIGSEGV", ["host-1"])  # not host-0's
    assert CrashLogState.read(log.path).poison.keys() == {b"1-1"}
    # host-0 involved, and 1-1 no longer pending: the reclaimer of another worker took it
    log.record_crash({}, "killed by SIGSEGV", ["host-0"])
    assert CrashLogState.read(log.path).poison == {}


def test_waiting_for_the_others_gives_up_on_a_stop(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    for _ in range(2):
        log.record_crash({b"2-1": "host-1"}, "killed by SIGSEGV")
    mine = Trials(log.path, "host-0")
    started = time.monotonic()
    mine.wait_for_the_others(timeout_s=30, stop=lambda: True)
    assert time.monotonic() - started < 5


def test_a_trial_that_ends_on_anything_else_still_stands_against_its_suspect(tmp_path) -> None:
    """An internal error, a dead peer: the process is on its way down, perhaps because
    of the suspect, and the death that follows convicts it."""
    log = CrashLog(tmp_path / "entries")
    pending = {b"1-1": "host-0"}
    log.record_crash(pending, "exit code 5")
    log.record_crash(pending, "exit code 5")
    trials = Trials(log.path, "host-0")
    with pytest.raises(RuntimeError), trials.alone(b"1-1", given_up_on=(ConnectionError,)):
        raise RuntimeError("result out of order")
    log.record_crash(pending, "exit code 5")
    assert CrashLogState.read(log.path).poison.keys() == {b"1-1"}


def test_a_death_that_counts_against_nobody_ends_the_trials_it_cut_short(tmp_path) -> None:
    log = CrashLog(tmp_path / "entries")
    pending = {b"1-1": "host-0", b"1-2": "host-0"}
    log.record_crash(pending, "killed by SIGSEGV")
    log.record_crash(pending, "killed by SIGSEGV")
    trials = Trials(log.path, "host-0")
    trials._append(b"trying", b"1-1")  # 1-1 on trial when the OOM killer struck
    log.forget_trials()
    # next generation: 1-2 runs alone and segfaults; 1-1's old trial accuses nothing
    with trials.alone(b"1-2"):
        log.record_crash(pending, "killed by SIGSEGV")
    assert CrashLogState.read(log.path).poison.keys() == {b"1-2"}
