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
