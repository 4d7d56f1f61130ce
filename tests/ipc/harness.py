"""Shared pieces of the IPC tests: trio runner, short endpoints, worker commands, notifications."""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from lazylayer.daemon.pool import WorkerPool

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT = 0.2  # seconds; death is noticed after 3 silent beats
QUIET = 0.2      # background quiet period used by the tests (upstream: 5 s)
DEADLINE = 60.0  # generous bound on any single wait, so a stall fails instead of hanging


def trio_test(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run an async test under trio (pytest fixtures still arrive as keyword arguments)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def worker_command(endpoint: str, capacity: int = 1, drain_timeout: float = 30.0) -> list[str]:
    """The test worker (tests/support/ipc_worker.py) as a fresh interpreter: exec, never fork."""
    return [sys.executable, "-m", "tests.support.ipc_worker", "--endpoint", endpoint,
            "--capacity", str(capacity), "--heartbeat-interval", str(HEARTBEAT),
            "--heartbeat-liveness", "3", "--drain-timeout", str(drain_timeout), "--log-level", "WARNING"]


def make_pool(endpoint: str, spawn: int = 0, capacity: int = 1, **options: Any) -> WorkerPool:
    settings: dict[str, Any] = dict(heartbeat_interval=HEARTBEAT, heartbeat_liveness=3, quiet_period=QUIET,
                                    restart_backoff=0.1, stop_timeout=10.0,
                                    worker_command=worker_command(endpoint, capacity))
    settings.update(options)
    return WorkerPool(endpoint, spawn=spawn, **settings)


class Workers:
    """External workers (the supervisord case, spawn=0), started and reaped by the test."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, capacity: int = 1, drain_timeout: float = 30.0) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(worker_command(self.endpoint, capacity, drain_timeout), cwd=REPO)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@dataclass(frozen=True)
class Note:
    event: str
    kind: str
    pid: int
    tag: str


class Notifier:
    """Receives the datagrams test jobs send when they start (see ipc_worker.py)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.setblocking(False)

    def close(self) -> None:
        self._sock.close()

    async def next(self) -> Note:
        with trio.fail_after(DEADLINE):
            while (note := self._read()) is None:
                await trio.lowlevel.wait_readable(self._sock)
        return note

    async def take(self, count: int) -> list[Note]:
        return [await self.next() for _ in range(count)]

    def pending(self) -> list[Note]:
        """Notes already delivered. A job sends its note before its reply, and local datagrams
        are queued at send time, so once every reply is in, this list is complete."""
        notes = []
        while (note := self._read()) is not None:
            notes.append(note)
        return notes

    def _read(self) -> Note | None:
        try:
            data = self._sock.recv(512)
        except BlockingIOError:
            return None
        event, kind, pid, tag = data.decode().split(" ")
        return Note(event, kind, int(pid), tag)
