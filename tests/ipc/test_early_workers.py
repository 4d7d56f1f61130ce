"""Workers forked from one process before the front's imports (daemon/earlyworkers.py,
workers/prefork.py): they serve as exec'd ones do, are the starting process's own children, and
none outlives a stop."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import trio

from lazylayer.daemon.earlyworkers import EarlyWorkers
from lazylayer.daemon.pool import WorkerPool
from lazylayer.daemon.spawner import default_worker_command
from tests.ipc.harness import DEADLINE, HEARTBEAT, trio_test


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


@trio_test
async def test_forked_workers_serve_and_are_our_children(endpoint):
    command = default_worker_command(endpoint, HEARTBEAT, 3)
    early = _start(2, command + ["--parent-pid", str(os.getpid())])
    async with WorkerPool(endpoint, spawn=2, heartbeat_interval=HEARTBEAT, adopt=early) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(2)
            pids = {(await pool.submit("ping")).result["pid"] for _ in range(8)}
        forked = {early.pid(0), early.pid(1)}
        assert pids <= forked and len(forked) == 2
        assert {_parent(pid) for pid in forked} == {os.getpid()}
        assert {p.pid for p in pool.status().processes} == forked
        assert all(p.restarts == 0 for p in pool.status().processes)
        # a killed one is seen and restarted (exec'd), whoever read the pids first
        os.kill(early.pid(0), signal.SIGKILL)
        with trio.fail_after(DEADLINE):
            while not any(p.restarts == 1 and p.running for p in pool.status().processes):
                await trio.sleep(0.05)
            await pool.wait_workers(2)
    assert early.poll(0) == -signal.SIGKILL and early.poll(1) is not None  # reaped by the spawner
    assert not _subreaper()  # only until the forker handed them over


def test_stop_before_the_spawner_took_them_kills_them():
    """The daemon failed before its pool started: `stop` kills what was forked, and the forker
    itself when it had not forked yet."""
    command = [sys.executable, "-m", "lazylayer.workers.main", "--endpoint", "ipc:///tmp/ll-nowhere.sock"]
    early = _start(2, command)
    assert early.ready(DEADLINE)  # forked
    early.stop()
    assert early.poll(0) == -signal.SIGKILL and early.poll(1) == -signal.SIGKILL
    unforked = _start(2, command)
    unforked.stop()
    assert unforked.poll(0) is not None and unforked.poll(1) is not None


@trio_test
async def test_a_forker_that_cannot_start_leaves_the_workers_to_the_spawner(endpoint, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    early = _start(2, default_worker_command(endpoint, HEARTBEAT, 3))
    monkeypatch.undo()
    assert early.pid(0) is None and early.poll(1) == -1 and not _subreaper()
    async with WorkerPool(endpoint, spawn=2, heartbeat_interval=HEARTBEAT, adopt=early) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(2)  # exec'd by the spawner, after its backoff
        assert all(p.restarts == 1 and p.running for p in pool.status().processes)


def _start(count: int, command: list[str]) -> EarlyWorkers:
    early = EarlyWorkers.launch()
    early.begin(count, command)
    return early


def _subreaper() -> bool:
    value = ctypes.c_int(0)
    ctypes.CDLL("libc.so.6").prctl(37, ctypes.byref(value), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    return bool(value.value)


def test_a_forker_launched_before_the_config_forks_what_begin_says():
    """`launch` starts the forker importing before the daemon knows its worker count; `begin`
    tells it (the forker waits for it), and begin(0) or a stop before begin leaves nothing."""
    command = [sys.executable, "-m", "lazylayer.workers.main", "--endpoint", "ipc:///tmp/ll-nowhere.sock"]
    early = EarlyWorkers.launch()
    assert _subreaper()
    early.begin(3, command)
    assert early.ready(DEADLINE) and all(early.pid(i) is not None for i in range(3)) and early.pid(3) is None
    assert {_parent(early.pid(i)) for i in range(3)} == {os.getpid()}
    early.stop()
    assert [early.poll(i) for i in range(3)] == [-signal.SIGKILL] * 3 and not _subreaper()
    for never in (lambda e: e.begin(0, command), lambda e: e.stop()):
        early = EarlyWorkers.launch()
        never(early)
        assert early.count == 0 and early.pid(0) is None and not _subreaper()
        early.stop()  # again: nothing left to do
