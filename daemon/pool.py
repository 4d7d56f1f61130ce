"""The worker pool, front side: a ROUTER socket, a ready set of workers, and job bookkeeping.

Usable without FUSE: ``async with WorkerPool(endpoint, spawn=2) as pool: await pool.submit(...)``.

Why it is built this way:
- **Load-aware dispatch, not round-robin.** Each worker announces a capacity; the pool counts
  what it has in flight per worker and sends a job only to a worker with a free slot (the least
  loaded one). A DEALER's round-robin would queue work behind a busy or dead peer (limits §3.4).
- **Nothing queued on a dead peer.** The ROUTER is ROUTER_MANDATORY + IMMEDIATE: sending to a
  peer whose pipe is gone raises EHOSTUNREACH, which the pool treats as that worker's death.
- **Deaths are expected.** Heartbeats run both ways; a worker silent for ``liveness`` of its
  announced intervals (or whose spawned process exited) is dropped and its in-flight jobs go back
  to the head of their queue, up to ``max_attempts`` dispatches per job.
- **One registry's trouble stays its own.** A job's ``group`` (its registry) may hold at most
  ``capacity`` slots of a worker, and a worker runs at most ``max_groups`` groups' worth: a
  stalled registry fills only its own slots while jobs for other registries still find theirs
  (issue 15). Jobs without a group share one.
- **Pure-Python work spreads over processes.** A job kind in ``exclusive_kinds`` (registering a
  TOC: Python per entry, the GIL held throughout) runs at most once at a time per worker: two of
  them in one process take as long as one after the other, while another worker idles (the
  first worker to connect used to get all of an image's layers). Nor does such a worker take
  prefetch or background work beside it: a piece inflated in the same process slowed the
  registration every reader of the layer waits for (a prefetch-on app start, 6 alternating
  runs: resolve 1.12 -> 0.79 s); demand reads still use its free slot.
- **Deadlines travel with jobs.** Each request carries the seconds its submitter still waits
  (minus a margin for the answer to arrive first); the worker cuts its waits to it, so a job
  re-dispatched after a death gets what is left of the budget, not a fresh one.
- **Dedup.** Concurrent submits with the same ``(kind, dedup_key)`` share one job and its result.
- **Priorities.** foreground > prefetch > background, and within one by rank (daemon/jobqueue.py:
  a prefetch's pieces, the first ones of every layer first); background jobs are held while any
  foreground job is live and for ``quiet_period`` after the last one ended (upstream: 5 s).
  Prefetch and background jobs leave one of a group's slots on each worker free (when it has
  two or more): queue order alone let prefetch pieces fill every slot, and a read then waited
  for a 4 MiB piece to end before its own job was sent (prefetch on, the first 4 KiB read
  after a resolve took 130-180 ms instead of 30-60 ms).
- **One thread.** Everything runs in the trio thread: messages arrive through the synchronous
  pump callback (daemon/zmqtrio.py) and every state change is followed by a synchronous
  dispatch, so there are no locks and no window between "slot freed" and "job sent".
- **The front never forks.** Spawned workers are daemon/spawner.py's: new processes running
  ``worker_command`` (the first ones forked by a fresh process that has opened nothing:
  daemon/earlyworkers.py) that make their own zmq context, restarted with exponential backoff.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import trio
import zmq

from lazylayer.daemon.earlyworkers import EarlyWorkers
from lazylayer.daemon.jobqueue import JobQueues, Priority
from lazylayer.daemon.poolstatus import PoolStatus, WorkerStatus
from lazylayer.daemon.quietgate import QuietGate
from lazylayer.daemon.spawner import SpawnSettings, WorkerSpawner, default_worker_command
from lazylayer.daemon.zmqtrio import TrioSocket
from lazylayer.shared import protocol
from lazylayer.shared.errors import (LazyLayerError, PoolUnavailableError, ProtocolError,
                                     RequestTimeoutError, WorkerLostError)
from lazylayer.shared.perms import private_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolReply:
    """A job's answer. Payloads are zero-copy views of the received frames."""

    result: dict[str, Any]
    payloads: list[memoryview]
    worker: str


@dataclass(eq=False)
class _Job:
    id: int
    kind: str
    params: dict[str, Any]
    payloads: list[protocol.Buffer]
    priority: Priority
    dedup_key: Hashable | None
    #: its place among the jobs of its priority (daemon/jobqueue.py)
    rank: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    outcome: PoolReply | LazyLayerError | None = None
    waiters: int = 0
    attempts: int = 0
    queued: bool = False
    worker: _Worker | None = None
    #: trio time when the last submitter stops waiting (inf: never)
    deadline: float = math.inf
    #: slots are counted per group (a registry), see the module docstring
    group: Hashable | None = None


@dataclass(eq=False)
class _Worker:
    identity: bytes
    pid: int
    capacity: int
    kinds: frozenset[str]
    heartbeat: float
    last_seen: float
    #: job id -> its group, until the worker answers or dies (even for jobs nobody waits for)
    in_flight: dict[int, Hashable | None] = field(default_factory=dict)
    #: the in-flight jobs of an exclusive kind (at most one)
    exclusive: set[int] = field(default_factory=set)
    jobs_done: int = 0
    jobs_failed: int = 0
    last_dispatch: int = 0
    blocked: bool = False  # its pipe was full at our last send; wait for a sign of life

    @property
    def name(self) -> str:
        return self.identity.decode(errors="replace")


class WorkerPool:
    """Front side of the worker protocol. Enter it with ``async with`` inside trio."""

    def __init__(
        self,
        endpoint: str,
        *,
        spawn: int = 0,
        worker_command: Sequence[str] | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_liveness: int = 3,
        max_attempts: int = 3,
        max_groups: int = 4,
        quiet_period: float = 5.0,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 30.0,
        restart_stable_after: float = 10.0,
        stop_timeout: float = 10.0,
        exclusive_kinds: frozenset[str] = frozenset(),
        adopt: EarlyWorkers | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.exclusive_kinds = exclusive_kinds
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.max_attempts = max_attempts
        self.max_groups = max_groups
        #: when BACKGROUND jobs may be dispatched (daemon/quietgate.py)
        self.background_gate = QuietGate(quiet_period)
        self.spawner = WorkerSpawner(
            worker_command or default_worker_command(endpoint, heartbeat_interval, heartbeat_liveness), spawn,
            SpawnSettings(restart_backoff, restart_backoff_max, restart_stable_after, stop_timeout),
            on_exit=self._process_exited, on_change=self._notify_changed, adopt=adopt)
        self._workers: dict[bytes, _Worker] = {}
        self._jobs: dict[int, _Job] = {}
        self._dedup: dict[tuple[str, Hashable], _Job] = {}
        self._queues: JobQueues[_Job] = JobQueues()
        self._ids = itertools.count(1)
        self._dispatch_seq = itertools.count(1)
        self._workers_lost = 0
        self._dispatching = False
        self._closing = False
        self._refused: set[bytes] = set()
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._context: zmq.Context | None = None
        self._socket: TrioSocket | None = None
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> WorkerPool:
        await self._stack.__aenter__()
        try:
            self._context = zmq.Context()
            self._stack.callback(self._context.term)
            raw = self._context.socket(zmq.ROUTER)
            self._socket = TrioSocket(raw, self._on_message)
            self._stack.callback(self._socket.close)
            raw.setsockopt(zmq.ROUTER_MANDATORY, 1)
            try:
                raw.bind(self.endpoint)
            except zmq.ZMQError as exc:
                raise PoolUnavailableError(f"cannot listen for workers on {self.endpoint}: {exc}") from None
            if self.endpoint.startswith("ipc://"):
                private_file(self.endpoint[len("ipc://"):])  # only root's processes may be workers
            self._nursery = await self._stack.enter_async_context(trio.open_nursery())
            self._stack.push_async_callback(self._shutdown)
            await self._nursery.start(self._socket.pump)
            self._nursery.start_soon(self._maintain)
            self.spawner.start(self._nursery)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stack.__aexit__(*exc_info)

    async def _shutdown(self) -> None:
        """Stop spawned workers (the pump still runs, so their last answers arrive), fail what
        is left, then stop our tasks."""
        self._closing = True
        with trio.CancelScope(shield=True):
            await self.spawner.stop()
        for job in list(self._jobs.values()):
            self._finish(job, PoolUnavailableError("the worker pool is shutting down"))
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    # -- public API ----------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        payloads: Sequence[protocol.Buffer] = (),
        *,
        priority: Priority = Priority.FOREGROUND,
        dedup_key: Hashable | None = None,
        timeout: float = 30.0,
        group: Hashable | None = None,
        rank: int = 0,
    ) -> PoolReply:
        """Run one job on some worker and return its reply.

        Raises the worker's typed error (by ``kind``), WorkerLostError when ``max_attempts``
        workers died running it, PoolUnavailableError when no worker was there to take it within
        ``timeout`` seconds, RequestTimeoutError when workers were there but no answer came.
        Submits with the same ``(kind, dedup_key)`` while the first is live share its job (the
        job takes the highest priority among them, and the latest deadline, though a worker
        already running it keeps the one it was sent); params of later ones are ignored.
        ``group`` names the registry the job talks to (see the module docstring); ``rank`` orders
        the jobs of one priority, lower first (daemon/jobqueue.py).
        """
        if self._closing or self._socket is None:
            raise PoolUnavailableError("the worker pool is not running")
        job = self._dedup.get((kind, dedup_key)) if dedup_key is not None else None
        if job is None:
            job = _Job(next(self._ids), kind, dict(params or {}), list(payloads), Priority(priority), dedup_key,
                       rank, group=group)
            self._jobs[job.id] = job
            if dedup_key is not None:
                self._dedup[(kind, dedup_key)] = job
            if job.priority is Priority.FOREGROUND:
                self.background_gate.started()
            self._queues.push(job)
            self._notify_changed()
        elif priority < job.priority:
            self._promote(job, Priority(priority))
        job.waiters += 1
        deadline = trio.current_time() + timeout
        job.deadline = deadline if job.waiters == 1 else max(job.deadline, deadline)
        self._dispatch()
        try:
            with trio.move_on_after(timeout):
                await job.done.wait()
        finally:
            job.waiters -= 1
            if job.waiters == 0 and not job.done.is_set():
                self._retire(job)  # nobody waits any more
        if job.outcome is None:
            raise self._timeout_error(job, timeout)
        if isinstance(job.outcome, LazyLayerError):
            raise job.outcome
        return job.outcome

    def resize(self, count: int) -> None:
        """Keep ``count`` spawned workers from now on (a config reload). External workers are
        not affected."""
        self.spawner.resize(count)

    async def wait_workers(self, count: int = 1) -> PoolStatus:
        """Return once at least ``count`` workers are connected and accepting jobs."""
        return await self.wait_for(lambda s: sum(1 for w in s.workers if w.capacity > 0) >= count)

    async def wait_for(self, predicate: Callable[[PoolStatus], bool]) -> PoolStatus:
        """Wait until ``predicate(status())`` holds; re-checked whenever a worker connects,
        changes capacity or leaves, and whenever a job is submitted or ends. Wrap it in a trio
        timeout."""
        while not predicate(status := self.status()):
            await self._changed.wait()
        return status

    def status(self) -> PoolStatus:
        now = trio.current_time()
        restarts = self.spawner.restarts_by_pid()
        return PoolStatus(
            endpoint=self.endpoint,
            workers=[WorkerStatus(w.name, w.pid, w.capacity, len(w.in_flight), w.jobs_done, w.jobs_failed,
                                  round(now - w.last_seen, 3), restarts.get(w.pid, 0))
                     for w in self._workers.values()],
            processes=self.spawner.status(),
            queued={p.name.lower(): len(q) for p, q in self._queues.by_priority()},
            in_flight=sum(1 for j in self._jobs.values() if j.worker is not None),
            foreground_active=self.background_gate.live > 0,
            background_held=not self.background_gate.is_open(now),
            workers_lost=self._workers_lost,
        )

    # -- incoming messages (synchronous, from the pump) ----------------------------------------

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        try:
            message = protocol.decode(frames[1:])
        except ProtocolError as exc:
            if identity not in self._refused:
                log.error("worker %s speaks a broken or foreign protocol: %s", identity.decode(errors="replace"), exc)
                self._refused.add(identity)
            self._send(identity, protocol.Disconnect(str(exc), fatal=True))
            return
        now = trio.current_time()
        worker = self._workers.get(identity)
        if isinstance(message, protocol.Ready):
            self._on_ready(identity, worker, message, now)
        elif isinstance(message, (protocol.Reply, protocol.ErrorReply)):
            if worker is not None:
                worker.last_seen, worker.blocked = now, False
            self._on_answer(worker, message)
        elif worker is None:
            # Declared dead earlier, or it connected to a previous front: make it announce again.
            if not (isinstance(message, protocol.Disconnect)):
                self._send(identity, protocol.Disconnect("unknown worker; announce again"))
        elif isinstance(message, protocol.Heartbeat):
            worker.last_seen, worker.blocked, worker.heartbeat = now, False, message.interval
            self._dispatch()
        elif isinstance(message, protocol.Disconnect):
            log.info("worker %s (pid %d) leaves: %s", worker.name, worker.pid, message.reason)
            self._drop(worker, handback=set(message.handback))
        else:
            log.warning("worker %s sent a %s message; ignored", worker.name, message.TYPE)

    def _on_ready(self, identity: bytes, worker: _Worker | None, ready: protocol.Ready, now: float) -> None:
        if worker is None:
            worker = _Worker(identity, ready.pid, ready.capacity, frozenset(ready.kinds), ready.heartbeat, now)
            self._workers[identity] = worker
            log.info("worker %s (pid %d) connected, capacity %d", worker.name, worker.pid, worker.capacity)
        else:
            worker.capacity, worker.kinds, worker.heartbeat = ready.capacity, frozenset(ready.kinds), ready.heartbeat
            worker.last_seen, worker.blocked = now, False
        self._notify_changed()
        self._dispatch()

    def _on_answer(self, worker: _Worker | None, answer: protocol.Reply | protocol.ErrorReply) -> None:
        if worker is not None and answer.id in worker.in_flight:
            del worker.in_flight[answer.id]
            worker.exclusive.discard(answer.id)
            if isinstance(answer, protocol.Reply):
                worker.jobs_done += 1
            else:
                worker.jobs_failed += 1
        job = self._jobs.get(answer.id)
        if job is not None:
            name = worker.name if worker is not None else "(departed worker)"
            if isinstance(answer, protocol.Reply):
                self._finish(job, PoolReply(answer.result, list(answer.payloads), name))
            else:
                self._finish(job, answer.to_exception())
        else:
            self._notify_changed()  # an abandoned job's slot came back
        self._dispatch()

    # -- job bookkeeping -----------------------------------------------------------------------

    def _promote(self, job: _Job, priority: Priority) -> None:
        was_queued = job.queued
        self._queues.remove(job)
        if priority is Priority.FOREGROUND:
            self.background_gate.started()
        job.priority = priority
        if was_queued:
            self._queues.push(job)

    def _retire(self, job: _Job) -> None:
        """Forget a job that is finished or that nobody waits for any more."""
        self._queues.remove(job)
        self._jobs.pop(job.id, None)
        if job.dedup_key is not None and self._dedup.get((job.kind, job.dedup_key)) is job:
            del self._dedup[(job.kind, job.dedup_key)]
        if job.priority is Priority.FOREGROUND:
            self.background_gate.ended()
            self._wake.set()  # the background timer starts now
        # A worker still running it keeps it in its in_flight set until it answers or dies.
        job.worker = None

    def _finish(self, job: _Job, outcome: PoolReply | LazyLayerError) -> None:
        if job.done.is_set():
            return
        job.outcome = outcome
        self._retire(job)
        job.done.set()
        self._notify_changed()

    def _retry(self, job: _Job, count_attempt: bool) -> None:
        job.worker = None
        if not count_attempt:
            job.attempts -= 1
        if job.attempts >= self.max_attempts:
            self._finish(job, WorkerLostError(
                f"{job.kind} request {job.id}: {job.attempts} worker(s) died while running it"))
        else:
            self._queues.push(job, front=True)

    def _timeout_error(self, job: _Job, timeout: float) -> LazyLayerError:
        able = [w for w in self._workers.values() if w.capacity > 0 and job.kind in w.kinds]
        if not able:
            return PoolUnavailableError(
                f"no worker able to run {job.kind!r} connected to {self.endpoint} within {timeout:g} s")
        if job.attempts == 0 and job.worker is None:
            error = RequestTimeoutError(f"{job.kind} request waited {timeout:g} s in the queue and was never "
                                        f"sent ({len(able)} worker(s) connected, all busy)")
            error.never_sent = True  # type: ignore[attr-defined]  # not the registry's fault
            return error
        return RequestTimeoutError(
            f"{job.kind} request got no answer within {timeout:g} s ({len(able)} worker(s) connected)")

    # -- dispatch ------------------------------------------------------------------------------

    def _pick(self, job: _Job) -> _Worker | None:
        best, best_key = None, None
        spare = 0 if job.priority is Priority.FOREGROUND else 1  # a slot kept for a read that waits
        for w in self._workers.values():
            if (w.blocked or job.kind not in w.kinds or len(w.in_flight) >= w.capacity * self.max_groups
                    or sum(1 for g in w.in_flight.values() if g == job.group) >= max(1, w.capacity - spare)
                    or w.exclusive and (job.kind in self.exclusive_kinds or job.priority is not Priority.FOREGROUND)):
                continue
            key = (len(w.in_flight) / w.capacity, w.last_dispatch)
            if best_key is None or key < best_key:
                best, best_key = w, key
        return best

    def _next_assignment(self) -> tuple[_Job, _Worker] | None:
        """The first queued job (by priority, then rank and arrival) some worker has a slot for; a
        job whose group finds no slot does not hold up other groups' jobs behind it. With every
        worker full nothing can go, so the queues (thousands of prefetch pieces) are not walked."""
        if not any(not w.blocked and len(w.in_flight) < w.capacity * self.max_groups for w in self._workers.values()):
            return None
        now = trio.current_time()
        for priority, queue in self._queues.by_priority():
            if not queue or (priority is Priority.BACKGROUND and not self.background_gate.is_open(now)):
                continue
            tried: set[tuple[str, Hashable | None]] = set()
            for job in queue:
                if (job.kind, job.group) not in tried:
                    worker = self._pick(job)
                    if worker is not None:
                        return job, worker
                    tried.add((job.kind, job.group))
        return None

    def _dispatch(self) -> None:
        """Send queued jobs to free workers until one side runs out. Re-entrant calls (a send
        drains the socket, which may deliver answers) return at once: this loop re-reads state
        after every send."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while (assignment := self._next_assignment()) is not None:
                self._send_job(*assignment)
        finally:
            self._dispatching = False

    def _send_job(self, job: _Job, worker: _Worker) -> None:
        self._queues.remove(job)
        job.worker = worker
        job.attempts += 1
        worker.in_flight[job.id] = job.group
        if job.kind in self.exclusive_kinds:
            worker.exclusive.add(job.id)
        worker.last_dispatch = next(self._dispatch_seq)
        request = protocol.Request(job.id, job.kind, job.params, job.payloads, self._job_timeout(job),
                                   job.priority is not Priority.FOREGROUND)
        sent = self._send(worker.identity, request)
        if sent is True:
            return
        worker.in_flight.pop(job.id, None)
        worker.exclusive.discard(job.id)
        if job.worker is worker:  # still ours to put back (the drain inside the send may have moved it)
            self._retry(job, count_attempt=False)
        if sent is False:
            worker.blocked = True
        else:
            self._drop(worker, reason="unreachable")

    @staticmethod
    def _job_timeout(job: _Job) -> float | None:
        """What is left of the job's budget, less a margin (a tenth, at most 0.5 s) so that the
        worker's own error arrives before the submitter gives up; None without a deadline."""
        if job.deadline == math.inf:
            return None
        left = job.deadline - trio.current_time()
        return max(0.0, left - min(0.5, left / 10))

    def _send(self, identity: bytes, message: protocol.Message) -> bool | None:
        """True if sent, False if the peer's pipe is full, None if the peer is gone."""
        assert self._socket is not None
        try:
            return self._socket.try_send([identity, *protocol.encode(message)])
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                return None
            raise

    # -- worker deaths -------------------------------------------------------------------------

    def _drop(self, worker: _Worker, handback: set[int] = frozenset(), reason: str = "") -> None:
        """Forget a worker; its unfinished jobs go back to the head of their queues. Handed-back
        jobs do not count as attempts; jobs lost with a dead worker do."""
        if self._workers.get(worker.identity) is not worker:
            return
        del self._workers[worker.identity]
        if reason:
            self._workers_lost += 1
            log.warning("worker %s (pid %d) declared dead: %s; re-dispatching %d job(s)",
                        worker.name, worker.pid, reason, len(worker.in_flight))
        for job_id in sorted(worker.in_flight, reverse=True):  # appendleft: keep submit order
            job = self._jobs.get(job_id)
            if job is not None and job.worker is worker:
                self._retry(job, count_attempt=job_id not in handback)
        worker.in_flight.clear()
        worker.exclusive.clear()
        self._notify_changed()
        self._dispatch()

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _maintain(self) -> None:
        """Heartbeats out, liveness checks in, and the timer that resumes background work."""
        next_beat = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                beat = protocol.Heartbeat(self.heartbeat_interval)
                for worker in list(self._workers.values()):
                    if now - worker.last_seen > worker.heartbeat * self.heartbeat_liveness:
                        self._drop(worker, reason=f"silent for {now - worker.last_seen:.1f} s")
                    elif self._send(worker.identity, beat) is None:
                        self._drop(worker, reason="unreachable")
            self._dispatch()
            deadline = next_beat
            opens = self.background_gate.opens_at
            if self._queues.waiting(Priority.BACKGROUND) and now < opens:  # once open, only a free slot helps
                deadline = min(deadline, opens)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()

    # -- spawned workers -----------------------------------------------------------------------

    def _process_exited(self, pid: int) -> None:
        for worker in list(self._workers.values()):
            if worker.pid == pid:
                self._drop(worker, reason="process exited")
