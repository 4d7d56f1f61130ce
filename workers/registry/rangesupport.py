"""Which mirrors answer ranged reads right now: per-host state with expiry.

A pull-through cache (distribution's proxy mode, Harbor proxy projects, Dragonfly) serves a blob
it has not cached yet with ``200`` and the whole body whatever the `Range` says (distribution
issue 4667, Harbor 23875), and keeps filling its cache from the origin on its own. Reading that
body costs the origin one more whole blob per request (docker-registry 2.8 copies the blob once
for its cache and once more for every client request that arrives before the copy is done), so
the client closes it at once, marks the mirror here, and reads ranges from the next source.

The mark expires after a pause that starts at ``first_pause`` and doubles with each 200 in a row
(up to ``max_pause``); then the mirror is asked again, and its first 206 clears the mark. Each
such probe of a cache still filling costs the origin only what crossed the sockets before the
close (measured: 0.1-6 MB on loopback, README "Running a fleet"), so probes are kept rare.
The state is per process (every `RegistryClient` of a worker shares one); it travels to the
front in job replies and from there, as marks, in the next jobs to every worker of the daemon
(daemon/hostbackoff.MirrorRanges), which also shows it in `lazylayer status`.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from lazylayer.shared.errors import ProtocolError
from lazylayer.workers.jobs import Handler, Job, JobResult
from lazylayer.workers.registry import deadline

#: first pause before a mirror that answered a ranged read with the whole blob is asked again [s]
FIRST_PAUSE = 2.0
#: longest such pause [s]
MAX_PAUSE = 60.0
#: whole-blob answers in a row after which reads stop waiting for the mirror's copy: it is not
#: filling a cache, it ignores Range (2 + 4 + ... + 60 s: two minutes of asking)
GIVE_UP_STRIKES = 6
#: jobs nobody waits for: they never read beside a pull-through cache still filling
PATIENT_JOBS = frozenset({"prefetch", "background_fetch", "fetch_blob"})


@dataclass
class _FullBody:
    strikes: int
    until: float


@dataclass(frozen=True)
class HostRanges:
    """One host's state as `status` shows it."""

    host: str
    #: "full-body": the last ranged read got the whole blob; "ranged": it got a 206
    state: str
    #: 200 answers in a row
    strikes: int
    #: seconds until the host is asked for ranges again (0 when it is)
    retry_in: float


class RangeSupport:
    """Thread-safe per-host marks (``clock`` is injectable for tests)."""

    def __init__(self, first_pause: float = FIRST_PAUSE, max_pause: float = MAX_PAUSE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.clock = clock
        self._lock = threading.Lock()
        self._full: dict[str, _FullBody] = {}
        self._ranged: set[str] = set()
        self._rng = random.Random()

    def usable(self, host: str) -> bool:
        """False while ``host`` is marked: ranged reads go to the next source."""
        with self._lock:
            mark = self._full.get(host)
            return mark is None or self.clock() >= mark.until

    def wait(self, host: str) -> float:
        """Seconds until ``host`` is asked again (0: now)."""
        with self._lock:
            mark = self._full.get(host)
            return 0.0 if mark is None else max(0.0, mark.until - self.clock())

    def gave_up(self, host: str) -> bool:
        """``host`` sent whole blobs GIVE_UP_STRIKES times in a row: not worth waiting for."""
        with self._lock:
            mark = self._full.get(host)
            return mark is not None and mark.strikes >= GIVE_UP_STRIKES

    def full_body(self, host: str) -> None:
        """``host`` answered a ranged read with the whole blob."""
        with self._lock:
            strikes = self._full[host].strikes + 1 if host in self._full else 1
            pause = min(self.max_pause, self.first_pause * 2 ** (strikes - 1))
            self._full[host] = _FullBody(strikes, self.clock() + pause)
            self._ranged.discard(host)

    def adopt(self, host: str, strikes: int, seconds: float) -> None:
        """Another worker's mark (sent by the front): held unless this one knows better, and a
        little longer (up to a quarter), so the worker that marked it asks again first: two
        probes at once of a cache still filling cost the origin twice."""
        with self._lock:
            until = self.clock() + seconds * (1 + self._rng.random() / 4)
            mark = self._full.get(host)
            if seconds > 0 and (mark is None or mark.until < until):
                self._full[host] = _FullBody(max(strikes, mark.strikes if mark else 0), until)
                self._ranged.discard(host)

    def ranged(self, host: str) -> None:
        """``host`` answered a ranged read with 206: preferred again."""
        with self._lock:
            self._full.pop(host, None)
            self._ranged.add(host)

    def snapshot(self) -> list[HostRanges]:
        now = self.clock()
        with self._lock:
            out = [HostRanges(host, "full-body", mark.strikes, round(max(0.0, mark.until - now), 1))
                   for host, mark in self._full.items()]
            out += [HostRanges(host, "ranged", 0, 0.0) for host in self._ranged]
        return sorted(out, key=lambda h: h.host)


def job_context(support: RangeSupport, kind: str, handler: Handler) -> Handler:
    """``handler`` with the mirror state shared: marks come in with the job (``mirror_marks``:
    what other workers learnt) and this worker's view goes back with the reply (``mirrors``), so
    one probe of a filling pull-through cache serves the whole daemon. The job runs urgent
    (deadline.urgency) unless nobody waits for it: prefetch, background, the whole blob, or a
    chunk fetch the front sends with ``urgent = false`` (read-ahead, prefetch pieces)."""
    def run(job: Job) -> JobResult:
        try:
            marks = [(str(host), int(strikes), float(seconds))
                     for host, strikes, seconds in job.params.get("mirror_marks") or ()]
        except (TypeError, ValueError):
            raise ProtocolError(f"malformed mirror_marks {job.params.get('mirror_marks')!r:.200}") from None
        for host, strikes, seconds in marks:
            support.adopt(host, strikes, seconds)
        with deadline.urgency(kind not in PATIENT_JOBS and job.params.get("urgent") is not False):
            reply = handler(job)
        known = support.snapshot()
        if known:
            reply.result["mirrors"] = [asdict(h) for h in known]
        return reply
    return run
