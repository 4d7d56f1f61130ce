"""Worker processes the front starts itself (`lazylayer daemon --workers N`): exec, restart with
backoff, resize on reload, stop politely.

Why apart from the pool: the pool dispatches jobs to whatever workers connect (supervisord's, a
test's, ours); which of them are our children, how they are kept running and how they are
stopped is a concern of its own. A worker is a new process (exec'd, never forked from the front:
it makes its own zmq context and LMDB handle); a dead one restarts after a backoff that doubles
up to a cap and resets once a process lived ``stable_after`` seconds. The workers `lazylayer
daemon` forked from one process before trio ran (daemon/earlyworkers.py) are adopted into the
first slots and supervised like the rest.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import trio

from lazylayer.daemon.earlyworkers import EarlyWorkers
from lazylayer.daemon.poolstatus import ProcessStatus

log = logging.getLogger(__name__)


def default_worker_command(endpoint: str, heartbeat_interval: float, heartbeat_liveness: int) -> list[str]:
    return [sys.executable, "-m", "lazylayer.workers.main", "--endpoint", endpoint,
            "--heartbeat-interval", str(heartbeat_interval), "--heartbeat-liveness", str(heartbeat_liveness)]


class AdoptedProcess:
    """A worker forked before trio ran (daemon/earlyworkers.py), with the parts of `trio.Process`
    the spawner uses. Its pid is known once the forking process has written it; its exit is
    awaited through a pidfd, as trio waits for its own children."""

    def __init__(self, early: EarlyWorkers, index: int) -> None:
        self._early = early
        self._index = index

    @property
    def pid(self) -> int:
        return self._early.pid(self._index) or 0  # 0: never forked (the forker failed)

    @property
    def returncode(self) -> int | None:
        return self._early.poll(self._index)

    def send_signal(self, signum: int) -> None:
        self._early.kill(self._index, signum)

    def kill(self) -> None:
        self._early.kill(self._index, signal.SIGKILL)

    async def wait(self) -> int:
        # The forker writes the pids once its imports are done (~0.4 s). Looked for every 10 ms
        # rather than awaited on its pipe: a synchronous `pid()` meanwhile (status, a worker
        # connecting) reads and closes that pipe, and a wait on a closed fd never ends.
        while not self._early.ready():
            await trio.sleep(0.01)
        if self.returncode is None:
            pidfd = os.pidfd_open(self.pid)
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        return self._early.wait(self._index)


Process = Union[trio.Process, AdoptedProcess]


@dataclass
class Slot:
    """One spawned worker position: the process in it now and its restart history."""

    index: int
    backoff: float
    process: Process | None = None
    #: a process started before the spawner ran, taken as this slot's first
    adopted: AdoptedProcess | None = None
    restarts: int = 0
    started: float = 0.0
    #: set by resize(): stop this worker and do not restart it
    retired: bool = False


@dataclass(frozen=True)
class SpawnSettings:
    restart_backoff: float = 0.5
    restart_backoff_max: float = 30.0
    restart_stable_after: float = 10.0
    stop_timeout: float = 10.0


class WorkerSpawner:
    """``count`` exec'd workers kept running in a nursery. ``on_exit(pid)`` is told of each
    process that ends (the pool drops the worker it was), ``on_change()`` of slots coming and
    going."""

    def __init__(self, command: Sequence[str], count: int, settings: SpawnSettings,
                 on_exit: Callable[[int], None], on_change: Callable[[], None],
                 adopt: EarlyWorkers | None = None) -> None:
        self.command = list(command)
        self.settings = settings
        self.slots = [Slot(i, settings.restart_backoff) for i in range(count)]
        if adopt is not None:
            for slot in self.slots[:adopt.count]:  # stop() reaches them from the start
                slot.process = slot.adopted = AdoptedProcess(adopt, slot.index)
        self._numbers = itertools.count(count)
        self._on_exit = on_exit
        self._on_change = on_change
        self._closing = False
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for slot in self.slots:
            nursery.start_soon(self._supervise, slot)

    def resize(self, count: int) -> None:
        """Keep ``count`` spawned workers from now on (a config reload). New ones start at once;
        surplus ones get SIGTERM - they finish or hand back their jobs - and are not restarted."""
        if count < 0:
            raise ValueError(f"worker count {count} is negative")
        assert self._nursery is not None, "resize() needs a running spawner"
        active = [slot for slot in self.slots if not slot.retired]
        for slot in active[count:]:
            slot.retired = True
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGTERM)
        for _ in range(count - len(active)):
            slot = Slot(next(self._numbers), self.settings.restart_backoff)
            self.slots.append(slot)
            self._nursery.start_soon(self._supervise, slot)
        log.info("spawned workers: %d -> %d", len(active), count)

    def restarts_by_pid(self) -> dict[int, int]:
        return {s.process.pid: s.restarts for s in self.slots if s.process is not None}

    def status(self) -> list[ProcessStatus]:
        return [ProcessStatus(s.index, s.process.pid if s.process else None,
                              s.process is not None and s.process.returncode is None, s.restarts, s.backoff)
                for s in self.slots]

    async def stop(self) -> None:
        """SIGTERM (workers finish or hand back their jobs), then SIGKILL after stop_timeout."""
        self._closing = True
        running = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.settings.stop_timeout):
            for process in running:
                await process.wait()
        for process in running:
            if process.returncode is None:
                log.warning("worker process %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                await process.wait()

    async def _supervise(self, slot: Slot) -> None:
        try:
            await self._keep_running(slot)
        finally:
            if slot.retired:
                self.slots.remove(slot)
                self._on_change()

    async def _keep_running(self, slot: Slot) -> None:
        settings = self.settings
        while not self._closing and not slot.retired:
            try:
                process: Process = slot.adopted or await trio.lowlevel.open_process(self.command)
                slot.adopted = None
            except OSError as exc:
                log.error("cannot start worker %s: %s", self.command, exc)
            else:
                slot.process, slot.started = process, trio.current_time()
                await process.wait()
                if self._closing:
                    return
                self._on_exit(process.pid)
                if slot.retired:
                    log.info("worker process %d stopped (worker count lowered)", process.pid)
                    return
                log.warning("worker process %d exited with status %s", process.pid, process.returncode)
                if trio.current_time() - slot.started >= settings.restart_stable_after:
                    slot.backoff = settings.restart_backoff
            slot.restarts += 1
            await trio.sleep(slot.backoff)
            slot.backoff = min(slot.backoff * 2, settings.restart_backoff_max)
