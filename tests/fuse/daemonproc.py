"""A real `lazylayer daemon` process for tests: its own config, cache, run dir and FUSE mount.

    d = start_daemon(workdir, workers=1, config={"fuse": {"opaque_type": "all"}})
    d.layer_dir(ref, digest)        # MNT/<base64(ref)>/<digest>/diff (resolved on first access)
    d.call("status")                # the control socket
    d.cli("mount", ref, target)     # a lazylayer command against this daemon (CompletedProcess)
    d.kill(); d2 = start_daemon(workdir, ...)   # crash + restart on the same mountpoint and cache
    d.stop()                        # SIGTERM, then unmount whatever is left under workdir/mountpoint

The daemon gets PR_SET_PDEATHSIG(SIGTERM), so a killed pytest does not leave it serving.
`stop` always leaves no mount behind (umount -l of anything still mounted), even when the daemon
misbehaved, so fixtures call it in teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lazylayer.daemon import mounts
from lazylayer.daemon.control import call
from lazylayer.daemon.layout import encode_ref
from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.procs import die_with_parent, stop_process
from tests.support.fetchstack import write_config

LAZYLAYER = [sys.executable, "-m", "lazylayer.daemon.cli.main"]


@dataclass
class RunningDaemon:
    workdir: Path
    mountpoint: Path
    run_dir: Path
    cache_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None
    #: start_daemon made the run dir: stop() removes it
    owns_run_dir: bool = False
    extra_mounts: list[Path] = field(default_factory=list)

    def layer_root(self, ref: str, digest: str) -> Path:
        return self.mountpoint / encode_ref(ref) / digest

    def layer_dir(self, ref: str, digest: str) -> Path:
        return self.layer_root(ref, digest) / "diff"

    def call(self, op: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        return call(str(self.run_dir), op, params, timeout=timeout)

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        command = [*LAZYLAYER, *args, "--config", str(self.config_path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LAZYLAYER_CONFIG": ""})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: what a crash leaves - a dead FUSE connection on the mountpoint."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=30)
        unmount_under(self.workdir, self.mountpoint, *self.extra_mounts)
        if self.owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def unmount_under(*roots: Path) -> None:
    """Lazily unmount every mount at or below ``roots`` (deepest first)."""
    prefixes = [os.path.abspath(root) for root in roots]  # a symlinked root is not ours to unmount
    found = [m.mountpoint for m in mounts.mounts()
             if any(m.mountpoint == p or m.mountpoint.startswith(p + "/") for p in prefixes)]
    for mountpoint in sorted(set(found), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True)


def daemon_config(workdir: Path, run_dir: Path, sections: dict[str, dict[str, Any]] | None = None) -> Path:
    base: dict[str, dict[str, Any]] = {
        "daemon": {"mountpoint": str(workdir / "mnt"), "run_dir": str(run_dir), "log_level": "INFO"},
        "cache": {"dir": str(workdir / "cache"), "map_size": 4 << 30, "max_size": 2 << 30},
        "workers": {"heartbeat_interval": 0.5, "request_timeout": 30.0, "capacity": 2},
        "registry": {"max_retries": 1, "max_backoff": 0.5},
        "background": {"quiet_period": 0.2},
        "prefetch": {"timeout": 20.0},
    }
    for section, values in (sections or {}).items():
        base.setdefault(section, {}).update(values)
    return write_config(workdir / "lazylayer.toml", base)


def start_daemon(workdir: Path, *, workers: int = 1, config: dict[str, dict[str, Any]] | None = None,
                 run_dir: Path | None = None, wait: bool = True, workers_flag: bool = True) -> RunningDaemon:
    """Start a daemon on ``workdir``/mnt with its cache in ``workdir``/cache. Called again with the
    same workdir (and ``run_dir``), it reuses both: a restart. ``workers_flag=False`` leaves the
    worker count to the config file (``workers.count``), so a reload can change it."""
    workdir.mkdir(parents=True, exist_ok=True)
    owns_run_dir = run_dir is None
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="ll-fuse-", dir="/tmp"))  # ipc paths must be short
    config_path = daemon_config(workdir, run_dir, config)
    log_path = workdir / f"daemon-{time.monotonic_ns()}.log"
    daemon = RunningDaemon(workdir, workdir / "mnt", run_dir, workdir / "cache", config_path, log_path,
                           owns_run_dir=owns_run_dir)
    with open(log_path, "wb") as log:
        daemon.process = subprocess.Popen(
            [*LAZYLAYER, "daemon", "--config", str(config_path), *(["--workers", str(workers)] if workers_flag else [])],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(),
            env={**os.environ, "LAZYLAYER_CONFIG": ""})
    if wait:
        try:
            wait_ready(daemon, workers)
        except BaseException:
            daemon.stop()
            raise
    return daemon


@contextmanager
def running_daemon(workdir: Path, **options: Any) -> Iterator[RunningDaemon]:
    """`start_daemon` for the length of a ``with`` block (a fixture's body), stopped after it."""
    daemon = start_daemon(workdir, **options)
    try:
        yield daemon
    finally:
        daemon.stop()


def wait_ready(daemon: RunningDaemon, workers: int, timeout: float = 60.0) -> None:
    """Until the control socket answers and ``workers`` workers are connected."""
    deadline = time.monotonic() + timeout
    assert daemon.process is not None
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.process.returncode}:\n{daemon.log()}")
        try:
            status = daemon.call("status", timeout=2.0)
            if sum(1 for w in status["workers"]["workers"] if w["capacity"] > 0) >= workers:
                return
        except LazyLayerError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"daemon not ready after {timeout} s:\n{daemon.log()}")
