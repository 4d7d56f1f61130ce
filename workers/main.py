"""The worker process: connect to the front, announce, heartbeat, run jobs, reply; `lazylayer worker`.

Why blocking pyzmq plus threads, not trio: every job is blocking work (HTTP, zlib/zstd, LMDB write
transactions) that would need ``to_thread`` under trio anyway, and limits §3.2 measured to_thread
as the slowest hop. Here the **main thread alone owns the DEALER socket** (limits §3.4 pitfall 2)
and sleeps in ``zmq.Poller`` on the socket plus a wake-up pipe; one thread per job runs its handler
and hands the finished reply back through a queue and one byte on the pipe. Handlers never touch
ZeroMQ. How many jobs run at once is the front's call (``capacity`` per registry).

Deadlines (issue 15): a request carries the seconds the front still waits; the handler runs under
that deadline (workers/registry/deadline.py), which every registry wait respects. A job still
running ``ABANDON_GRACE`` past it is answered with a timeout error and abandoned: the front gets
its slot back, and the thread's late result is dropped. When as many abandoned threads are still
stuck as the worker has capacity, the worker hands its other jobs back and exits to be restarted
(threads cannot be killed; a new process is the way to reclaim them).

Liveness: the worker heartbeats every ``heartbeat_interval``; any message from the front proves it
alive. After ``liveness`` silent intervals (judged by the interval the front announces) the worker
drops its socket, makes a new one and announces itself again, so a restarted front gets its
workers back without anyone restarting them.

Parent death: a worker the front spawned gets ``--parent-pid`` and exits (handing its jobs back)
as soon as that process is gone, however it died: after a SIGKILLed front, its workers must not
live on and join the next front (shared/procs.py says why this is a pidfd, not PR_SET_PDEATHSIG).
Workers started by supervisord or by hand get no ``--parent-pid`` and outlive whoever started them.

SIGTERM/SIGINT: announce ``capacity 0`` (the front stops dispatching here), let running jobs
finish for up to ``drain_timeout``, hand back whatever is still running with a DISCONNECT, exit 0.

The DEALER keeps ``ZMQ_IMMEDIATE=0``, unlike the front: it has exactly one peer, so there is no
round-robin onto a dead pipe to fear, and the first READY is queued until the connection is up
instead of being refused.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import queue
import signal
import sys
import time
import threading
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import zmq

from lazylayer.shared import protocol
from lazylayer.shared.config import Config, load_config
from lazylayer.shared.errors import LazyLayerError, ProtocolError, RequestTimeoutError, WorkerError
from lazylayer.shared.logs import setup_logging
from lazylayer.shared.perms import private_umask
from lazylayer.shared.procs import watch_parent
from lazylayer.workers.fetcher import fetcher_handlers
from lazylayer.workers.jobs import BUILTIN_HANDLERS, Handlers, Job, JobResult
from lazylayer.workers.registry.deadline import job_deadline

log = logging.getLogger(__name__)

# Sending the final DISCONNECT must not be dropped by LINGER=0, nor hang on a dead front.
_FINAL_LINGER_MS = 1000
#: how long past its deadline a job may run before it is abandoned (CPU work after the last
#: network wait: decompression, the LMDB write) [s]
ABANDON_GRACE = 1.0
#: exit code of a worker that leaves to reclaim stuck threads (its supervisor restarts it)
EXIT_RECYCLE = 3
#: ZeroMQ's retry of a connect the front's socket is not there for yet: the first after 5 ms,
#: doubling up to 200 ms (a front that stays away is not asked 200 times a second) [ms]
RECONNECT_FIRST_MS = 5
RECONNECT_MAX_MS = 200
#: how much nicer than its worker a job thread the front marked background (prefetch, background
#: fetch) runs: on busy cores the CPU goes to the jobs a reader or a resolve waits on
BACKGROUND_NICE = 10


def _run_nicer(steps: int) -> None:
    """Lower this thread's CPU share (Linux keeps a nice value per thread): prefetch pieces and
    the background fetch inflate and hash megabytes, and on two cores they took CPU from the
    registration of the layer a container start waits on, and from the reads it waits on.
    Nice only weighs the scheduler's choice: with idle cores the thread runs as fast as before."""
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + steps))
    except OSError as exc:  # a seccomp'd or odd platform: the job still runs, at full share
        log.debug("cannot lower a background job's CPU share: %s", exc)


@dataclass(frozen=True)
class WorkerSettings:
    endpoint: str
    capacity: int = 2
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    drain_timeout: float = 30.0
    #: exit when this process (the front that spawned us) exits; None: live on
    parent_pid: int | None = None
    #: a pidfd of ``parent_pid`` opened by workers/prefork.py, which forked us (our parent is
    #: then not the daemon, so the check `watch_parent` makes was made there)
    parent_fd: int | None = None


class Worker:
    """One worker process's loop. Create it after exec: it makes its own zmq Context."""

    def __init__(self, settings: WorkerSettings, handlers: Handlers,
                 on_reload: Callable[[], None] | None = None) -> None:
        if settings.capacity < 1:
            raise WorkerError("worker capacity must be at least 1")
        self.settings = settings
        self.handlers = dict(handlers)
        #: SIGHUP (e.g. `supervisorctl signal HUP lazylayer:*`): re-read what can change live
        self.on_reload = on_reload
        self._context = zmq.Context()
        self._poller = zmq.Poller()
        self._socket: zmq.Socket | None = None
        self._socket_ids = itertools.count(1)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._finished: queue.SimpleQueue[protocol.Message] = queue.SimpleQueue()
        #: running job id -> when to abandon it (monotonic; inf without a deadline)
        self._running: dict[int, float] = {}
        #: abandoned job ids whose threads have not ended yet
        self._abandoned: set[int] = set()
        self._need_announce = True
        self._front_interval = settings.heartbeat_interval
        self._last_front = time.monotonic()
        self._front_missing_logged = False
        self._stopping = False
        self._fatal: str | None = None

    # -- socket --------------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._socket is not None:
            self._poller.unregister(self._socket)
            self._socket.close(linger=0)
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # A readable, unique id per socket: the front shows it in `status`; never reused, so a
        # reconnect is never refused as a duplicate routing id.
        sock.setsockopt(zmq.ROUTING_ID, f"w{os.getpid()}.{next(self._socket_ids)}".encode())
        # Workers forked at daemon start are ready before the front has bound its socket; with
        # ZeroMQ's default retry (100 ms, then later) the first resolve could wait ~180 ms for them.
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_FIRST_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        sock.connect(self.settings.endpoint)
        self._poller.register(sock, zmq.POLLIN)
        self._socket = sock
        self._need_announce = True
        self._last_front = time.monotonic()

    def _send(self, message: protocol.Message) -> bool:
        """Send without blocking; False if the socket cannot take it now (front gone, HWM)."""
        assert self._socket is not None
        try:
            self._socket.send_multipart(protocol.encode(message), zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _announce(self) -> None:
        capacity = 0 if self._stopping else self.settings.capacity
        ready = protocol.Ready(os.getpid(), capacity, self.settings.heartbeat_interval, sorted(self.handlers))
        if self._send(ready):
            self._need_announce = False

    # -- messages from the front ---------------------------------------------------------------

    def _receive_all(self) -> None:
        assert self._socket is not None
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._last_front = time.monotonic()
            if self._front_missing_logged:
                log.info("front is back")
                self._front_missing_logged = False
            try:
                message = protocol.decode(frames)
            except ProtocolError as exc:
                log.warning("ignoring a malformed message from the front: %s", exc)
                continue
            self._handle(message)

    def _handle(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Request):
            self._start(Job(message.id, message.kind, message.params, message.payloads), message.timeout,
                        message.background)
        elif isinstance(message, protocol.Heartbeat):
            self._front_interval = message.interval
        elif isinstance(message, protocol.Disconnect):
            if message.fatal:
                self._fatal = message.reason
            else:
                log.info("front asks us to announce again: %s", message.reason)
                self._need_announce = True
                self._announce()
        else:
            log.warning("ignoring a %s message: only workers send those", message.TYPE)

    # -- jobs ----------------------------------------------------------------------------------

    def _start(self, job: Job, timeout: float | None, background: bool = False) -> None:
        handler = self.handlers.get(job.kind)
        if handler is None:
            self._send(protocol.ErrorReply.from_exception(job.id, WorkerError(f"unknown job kind {job.kind!r}")))
            return
        self._running[job.id] = time.monotonic() + timeout + ABANDON_GRACE if timeout is not None else float("inf")
        threading.Thread(target=self._run_job, args=(handler, job, timeout, background), name=f"job-{job.id}",
                         daemon=True).start()

    def _run_job(self, handler, job: Job, timeout: float | None, background: bool) -> None:  # a job thread
        if background:
            _run_nicer(BACKGROUND_NICE)
        try:
            with job_deadline(timeout):
                outcome = handler(job)
            if not isinstance(outcome, JobResult):
                raise TypeError(f"handler for {job.kind!r} returned {type(outcome).__name__}, not JobResult")
            message: protocol.Message = protocol.Reply(job.id, outcome.result, list(outcome.payloads))
        except Exception as exc:
            if not isinstance(exc, LazyLayerError):
                log.exception("job %d (%s) failed", job.id, job.kind)
            message = protocol.ErrorReply.from_exception(job.id, exc)
        self._finished.put(message)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _send_finished(self) -> None:
        while True:
            try:
                message = self._finished.get_nowait()
            except queue.Empty:
                return
            if message.id in self._abandoned:
                self._abandoned.discard(message.id)  # answered already; its thread ended at last
                continue
            self._running.pop(message.id, None)
            if not self._send(message):
                log.warning("reply to request %d dropped: front unreachable (it will re-dispatch)", message.id)

    # -- the loop ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _abandon_overdue(self, now: float) -> bool:
        """Answer jobs past deadline + grace with a timeout error; True when so many threads are
        stuck that the worker must be recycled."""
        for job_id, until in list(self._running.items()):
            if now >= until:
                del self._running[job_id]
                self._abandoned.add(job_id)
                log.error("job %d is still running %.1f s past its deadline; abandoned", job_id, ABANDON_GRACE)
                self._send(protocol.ErrorReply.from_exception(job_id, RequestTimeoutError(
                    f"request {job_id}: the worker (pid {os.getpid()}) did not finish it by its deadline; abandoned")))
        return len(self._abandoned) >= self.settings.capacity

    def _tick(self, now: float) -> None:
        if self._need_announce:
            self._announce()
        else:
            self._send(protocol.Heartbeat(self.settings.heartbeat_interval))
        if now - self._last_front > self._front_interval * self.settings.heartbeat_liveness:
            if not self._front_missing_logged:
                log.warning("no word from the front at %s; reconnecting", self.settings.endpoint)
                self._front_missing_logged = True
            self._connect()
            self._announce()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit 0) or a fatal DISCONNECT from the front (exit 1)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.on_reload() if self.on_reload else None)
        parent_fd = self.settings.parent_fd
        if parent_fd is None and self.settings.parent_pid is not None:
            try:
                parent_fd = watch_parent(self.settings.parent_pid)
            except ProcessLookupError:
                log.error("the front (pid %d) that started this worker is gone; exiting", self.settings.parent_pid)
                return 1
        if parent_fd is not None:
            self._poller.register(parent_fd, zmq.POLLIN)
        self._connect()
        self._announce()
        interval = self.settings.heartbeat_interval
        next_tick = time.monotonic() + interval
        drain_deadline: float | None = None
        while True:
            now = time.monotonic()
            wait_until = next_tick if drain_deadline is None else min(next_tick, drain_deadline)
            ready = dict(self._poller.poll(max(0.0, wait_until - now) * 1000))
            if self._wake_r in ready:
                while True:
                    try:
                        if not os.read(self._wake_r, 4096):
                            break
                    except BlockingIOError:
                        break
            if self._socket in ready:
                self._receive_all()
            self._send_finished()
            if parent_fd is not None and parent_fd in ready:
                log.error("the front (pid %d) that started this worker has exited; exiting too",
                          self.settings.parent_pid)
                return self._exit(1, sorted(self._running))
            if self._fatal is not None:
                log.error("front refused this worker: %s", self._fatal)
                return self._exit(1, [])
            now = time.monotonic()
            if self._stopping and drain_deadline is None:
                log.info("stopping: finishing %d running job(s)", len(self._running))
                drain_deadline = now + self.settings.drain_timeout
                self._announce()
            if drain_deadline is not None and (not self._running or now >= drain_deadline):
                return self._exit(0, sorted(self._running))
            if self._abandon_overdue(now):
                log.error("%d abandoned job thread(s) still stuck; exiting to be restarted", len(self._abandoned))
                return self._exit(EXIT_RECYCLE, sorted(self._running))
            if now >= next_tick:
                self._tick(now)
                next_tick = now + interval

    def _exit(self, code: int, handback: list[int]) -> int:
        assert self._socket is not None
        if handback:
            log.warning("handing back %d unfinished job(s) to the front", len(handback))
        self._send(protocol.Disconnect("worker exiting", handback))
        self._socket.close(linger=_FINAL_LINGER_MS)
        self._context.term()
        if handback or self._abandoned:
            # Job threads are still inside handlers; they cannot be interrupted and must not
            # keep the process alive (nor send anything: their jobs now belong to others).
            logging.shutdown()
            os._exit(code)
        return code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    parser.add_argument("--endpoint", help="front's worker endpoint (default: ipc://RUN_DIR/workers.sock)")
    parser.add_argument("--cache-dir", help="LMDB cache directory (default: cache.dir)")
    parser.add_argument("--capacity", type=int, help="jobs run at once for one registry (default: workers.capacity)")
    parser.add_argument("--heartbeat-interval", type=float, help="seconds (default: workers.heartbeat_interval)")
    parser.add_argument("--heartbeat-liveness", type=int, help="missed beats before the front counts as dead")
    parser.add_argument("--drain-timeout", type=float,
                        help="on SIGTERM, seconds to let running jobs finish before handing them back "
                             "(default: workers.drain_timeout)")
    parser.add_argument("--parent-pid", type=int,
                        help="exit when this process exits (the daemon passes its own pid to the workers it spawns)")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or None).config


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    config = _config(args)
    return WorkerSettings(
        endpoint=args.endpoint or f"ipc://{config.daemon.run_dir}/workers.sock",
        capacity=config.workers.capacity if args.capacity is None else args.capacity,
        heartbeat_interval=args.heartbeat_interval or config.workers.heartbeat_interval,
        heartbeat_liveness=args.heartbeat_liveness or config.workers.heartbeat_liveness,
        drain_timeout=config.workers.drain_timeout if args.drain_timeout is None else args.drain_timeout,
        parent_pid=args.parent_pid,
    )


def default_handlers(args: argparse.Namespace) -> Handlers:
    """What `lazylayer worker` runs: the built-in jobs plus the fetcher jobs (workers/fetcher.py).
    Nothing is opened here: the cache is opened by the first job that needs it."""
    return {**BUILTIN_HANDLERS, **fetcher_handlers(_config(args), args.cache_dir)}


def run_worker(settings: WorkerSettings, handlers: Handlers, on_reload: Callable[[], None] | None = None) -> int:
    return Worker(settings, handlers, on_reload).run()


def reload_logging(args: argparse.Namespace) -> Callable[[], None]:
    """A worker's SIGHUP: the config file's log level and format, like the front's reload."""

    def reload() -> None:
        try:
            config = _config(args)
        except LazyLayerError as exc:
            log.error("reload refused: %s", exc)
            return
        setup_logging(config.daemon.log_level, config.daemon.log_format)
        log.info("reloaded: log level %s, format %s", config.daemon.log_level, config.daemon.log_format)

    return reload


def main(argv: Sequence[str] | None = None, handlers: Handlers | None = None, parent_fd: int | None = None) -> int:
    """Entry point for ``python -m lazylayer.workers.main`` (what the front execs), for workers
    forked by workers/prefork.py (``parent_fd``) and for test workers that bring their own
    handler table (default: `default_handlers`)."""
    parser = argparse.ArgumentParser(prog="lazylayer-worker", description="lazylayer fetcher worker")
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    private_umask()  # the cache files and blobs a worker writes are root's alone
    try:
        setup_logging(args.log_level, _config(args).daemon.log_format)
        settings = replace(settings_from_args(args), parent_fd=parent_fd)
        return run_worker(settings, default_handlers(args) if handlers is None else handlers, reload_logging(args))
    except LazyLayerError as exc:
        print(f"lazylayer worker: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
