"""Spawned workers die with their daemon: after SIGKILL of `lazylayer daemon --workers N` none of
its processes survives, and the next daemon on the same run dir has exactly its own N workers
(before the fix they lived on with parent PID 1 and joined it: status showed N+1)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.fuse.daemonproc import start_daemon


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _worker_pids(status: dict) -> set[int]:
    return {p["pid"] for p in status["workers"]["processes"] if p["pid"] is not None}


def test_sigkilled_daemon_leaves_no_worker_behind(tmp_path: Path):
    workdir = tmp_path / "d"
    first = start_daemon(workdir, workers=2)
    try:
        pids = _worker_pids(first.call("status"))
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        first.kill()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = {pid for pid in pids if _alive(pid)}
        assert not survivors, f"workers {survivors} of the killed daemon still run (parent {os.getpid()})"
        second = start_daemon(workdir, workers=2, run_dir=first.run_dir)
        try:
            time.sleep(1.5)  # a stray worker would reconnect within its liveness window (3 x 0.5 s)
            status = second.call("status")
            assert {w["pid"] for w in status["workers"]["workers"]} == _worker_pids(status)
        finally:
            second.stop()
    finally:
        first.stop()
        for pid in pids:  # before the fix: do not leave them running after the test
            if _alive(pid):
                os.kill(pid, 9)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_early_started_workers_are_supervised_and_stopped(tmp_path: Path):
    """`lazylayer daemon` forks its first workers from one process before its own imports
    (daemon/earlyworkers.py) and the spawner adopts them as its own children: a killed one is
    restarted like any spawned worker, and a clean stop leaves none running."""
    daemon = start_daemon(tmp_path / "d", workers=2)
    seen: set[int] = set()
    try:
        time.sleep(1.0)  # let any worker that was started twice connect too
        status = daemon.call("status")
        first = _worker_pids(status)
        assert len(first) == 2 and {w["pid"] for w in status["workers"]["workers"]} == first
        assert {_parent(pid) for pid in first} == {daemon.process.pid}  # the forker handed them over
        assert "worker forker" not in daemon.log()
        seen |= first
        victim = min(first)
        os.kill(victim, 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            processes = daemon.call("status")["workers"]["processes"]
            restarted = [p for p in processes if p["pid"] not in first and p["running"]]
            if restarted:
                break
            time.sleep(0.1)
        assert restarted and restarted[0]["restarts"] == 1, processes
        seen |= _worker_pids(daemon.call("status"))
    finally:
        daemon.stop()
    assert not [pid for pid in seen if _alive(pid)]
