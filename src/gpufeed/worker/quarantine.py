"""Isolating the message that takes the GPU down with it.

A kernel that traps or faults on one message loses the whole CUDA context:
no retry is possible in that process. So the compute process records the
messages it had on the device (``DeviceLost``) in a quarantine file owned by
the supervisor and exits; the supervisor starts a fresh one, and the
messages come back from Redis (they were never acknowledged).

The fresh process, while the quarantine holds anything, runs each batch at
once and each *suspect* on its own, noting ``trying`` before and ``cleared``
after. A suspect whose ``trying`` has no ``cleared`` took the device down
while it ran alone: it is *poison*, answered with an error (and so
dead-lettered) without running again. Innocent messages of the lost batch
cost one extra delivery; a poison message costs exactly two crashes, where
without the quarantine it would crash the worker until ``max_deliveries``.

Messages are known by a digest of their op and payload (the compute process
never sees Redis entry ids). Identical messages share a fate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import structlog

from gpufeed.errors import DeviceLost
from gpufeed.gpu.backend import Backend, Completed
from gpufeed.packing.layout import HEADER_BYTES, SlotArray, headers
from gpufeed.packing.status import STATUS_ERROR, STATUS_OK

log = structlog.get_logger()

# Suspects and poison that never come back (another worker answered them, or the
# reclaimer dead-lettered them) are forgotten this long after they were suspected,
# in a running process too: until then every batch runs one message at a time.
SUSPECT_TTL_S = 600.0
MAX_ENTRIES = 100_000


def digests(slots: SlotArray) -> list[str]:
    """One digest per request slot: its op id and payload bytes."""
    header = headers(slots)
    lens = np.minimum(header["len"].astype(np.int64), slots.shape[1] - HEADER_BYTES)
    found = []
    for i, n in enumerate(lens.tolist()):
        message = slots[i, 4:6].tobytes() + slots[i, HEADER_BYTES : HEADER_BYTES + n].tobytes()
        found.append(hashlib.blake2b(message, digest_size=16).hexdigest())
    return found


class Quarantine:
    """The quarantine file: one event per line, ``<kind> <digest> <unix time> [reason]``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.suspects: dict[str, tuple[float, str]] = {}  # digest -> (since, reason)
        self.poison: dict[str, str] = {}  # digest -> reason
        self._poison_since: dict[str, float] = {}  # digest -> when it was first suspected
        self._expired_at = 0.0  # when entries were last looked at for their age
        self._load()

    @property
    def active(self) -> bool:
        if (self.suspects or self.poison) and time.time() - self._expired_at >= 1.0:
            self._expire()
        return bool(self.suspects or self.poison)

    def _expire(self) -> None:
        """Forget entries suspected more than ``SUSPECT_TTL_S`` ago."""
        now = self._expired_at = time.time()
        cutoff = now - SUSPECT_TTL_S
        old = [d for d, (since, _) in self.suspects.items() if since < cutoff]
        old += [d for d, since in self._poison_since.items() if since < cutoff]
        for digest in old:
            self.suspects.pop(digest, None)
            self.poison.pop(digest, None)
            self._poison_since.pop(digest, None)
        if old:
            log.info("quarantine entries expired", count=len(old), suspects=len(self.suspects),
                     poison=len(self.poison))  # fmt: skip

    def _load(self) -> None:
        trying: dict[str, tuple[float, str]] = {}
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            kind, digest, since, reason = [*line.split(" ", 3), "", "", ""][:4]
            try:
                when = float(since)
            except ValueError:
                continue  # a line cut short by a crash mid-write
            if kind == "suspect":
                self.suspects[digest] = (when, reason)
            elif kind == "trying":
                trying[digest] = self.suspects.get(digest, (when, reason))
            elif kind in ("cleared", "answered"):
                self.suspects.pop(digest, None)
                trying.pop(digest, None)
        for digest, (suspected, why) in trying.items():  # it ran alone and the process died
            self.suspects.pop(digest, None)
            self.poison[digest] = why
            self._poison_since[digest] = suspected
        self._expire()
        self._rewrite()
        if self.active:
            log.warning("quarantine active", suspects=len(self.suspects),
                        poison=len(self.poison), path=str(self.path))  # fmt: skip

    def _rewrite(self) -> None:
        """Keep the file to the current state, so it never grows without bound."""
        lines = [f"suspect {d} {since} {why}" for d, (since, why) in self.suspects.items()]
        # A poison entry keeps the time it was first suspected: re-stamped on every
        # load, it would never expire.
        lines += [f"suspect {d} {self._poison_since[d]} {why}\ntrying {d} 0"
                  for d, why in self.poison.items()]  # fmt: skip
        self.path.write_text("".join(f"{line}\n" for line in lines[-MAX_ENTRIES:]))

    def _append(self, kind: str, digest: str, reason: str = "") -> None:
        # One write per event, flushed at once: the next line of code may be
        # the one that takes the process down.
        with self.path.open("a") as f:
            f.write(f"{kind} {digest} {time.time()} {reason}\n")

    def add_suspects(self, slots: Iterable[SlotArray], reason: str) -> int:
        reason = " ".join(reason.split())[:300]
        found = [d for part in slots for d in digests(part)]
        with self.path.open("a") as f:
            for digest in found:
                f.write(f"suspect {digest} {time.time()} {reason}\n")
        return len(found)

    def trying(self, digest: str) -> None:
        self._append("trying", digest)

    def cleared(self, digest: str) -> None:
        self.suspects.pop(digest, None)
        self._append("cleared", digest)

    def answered(self, digest: str) -> None:
        self.poison.pop(digest, None)
        self._poison_since.pop(digest, None)
        self._append("answered", digest)


class QuarantinedBackend(Backend):
    """A backend run one batch at a time while the quarantine holds anything:
    clean messages together, suspects each on its own, poison not at all."""

    def __init__(self, inner: Backend, quarantine: Quarantine) -> None:
        super().__init__(inner.table, inner.slot_bytes, inner.max_batch)
        self.inner = inner
        self.quarantine = quarantine
        self.name = inner.name
        self._done: list[Completed] = []

    def attach_request_rings(self, rings: list[SlotArray]) -> None:
        self.inner.attach_request_rings(rings)

    def in_flight_requests(self) -> list[SlotArray]:
        return self.inner.in_flight_requests()

    def submit(self, ring: int, requests: SlotArray) -> None:
        if not self.quarantine.active:
            self.inner.submit(ring, requests)
            return
        n = len(requests)
        width = self.slot_bytes - HEADER_BYTES
        out = np.zeros((n, width), np.uint8)
        out_lens = np.zeros(n, np.int64)
        status = np.full(n, STATUS_OK, np.uint16)
        names = digests(requests)
        held = self.quarantine.suspects.keys() | self.quarantine.poison.keys()
        clean = [i for i, d in enumerate(names) if d not in held]
        if clean:
            self._run(ring, requests[clean], clean, out, out_lens, status)
        for i, digest in enumerate(names):
            if digest in self.quarantine.poison:
                reason = self.quarantine.poison[digest] or "the GPU failed"
                text = f"quarantined: the GPU was lost each time this message ran ({reason})"
                data = text.encode()[:width]
                out[i, : len(data)] = np.frombuffer(data, np.uint8)
                out_lens[i], status[i] = len(data), STATUS_ERROR
                self.quarantine.answered(digest)
                log.error("poison message answered with an error", digest=digest)
            elif digest in self.quarantine.suspects:
                self.quarantine.trying(digest)
                self._run(ring, requests[i : i + 1], [i], out, out_lens, status)
                self.quarantine.cleared(digest)
        self._done.append(Completed(ring, headers(requests).copy(), out, out_lens, status))

    def _run(self, ring: int, requests: SlotArray, rows: list[int], out: SlotArray,
             out_lens: np.ndarray, status: np.ndarray) -> None:  # fmt: skip
        """Run ``requests`` through the inner backend now; put the results at ``rows``."""
        self._done += self.inner.poll(0.0) if self.inner.in_flight() else []
        self.inner.submit(ring, requests)
        got: list[Completed] = []
        while self.inner.in_flight():
            got += self.inner.poll(0.05)
        row = 0
        for done in got:
            k = len(done.requests)
            width = min(done.out.shape[1], out.shape[1])
            out[rows[row : row + k], :width] = done.out[:, :width]
            out_lens[rows[row : row + k]] = done.out_lens
            status[rows[row : row + k]] = done.status
            row += k

    def poll(self, timeout: float = 0.0) -> list[Completed]:
        done, self._done = self._done, []
        if self.inner.in_flight():
            done += self.inner.poll(0.0 if done else timeout)
        return done

    def in_flight(self) -> int:
        return len(self._done) + self.inner.in_flight()

    def close(self) -> None:
        self.inner.close()


def lost_device(backend: Backend, quarantine: Quarantine, exc: DeviceLost) -> int:
    """Record what ``backend`` had on the device when it was lost; how many messages."""
    return quarantine.add_suspects(backend.in_flight_requests(), str(exc))
