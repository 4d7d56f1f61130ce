"""The lazy side, driven exactly as a user drives it: `lazylayer daemon` in the foreground, then
`lazylayer mount REF DIR` / `lazylayer umount DIR` (the console script, as subprocesses).

This is the only module that knows lazylayer's command line; everything the harness measures
on the lazy side goes through `lazy_session`.
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
from typing import Callable, Iterator

from bench.errors import BenchError
from lazylayer.daemon import mounts
from lazylayer.daemon.control import call
from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.procs import die_with_parent, stop_process

READY_TIMEOUT = 120.0

#: The knobs the benchmark sets; everything else is lazylayer's documented default. Background
#: fetch is off so every measurement sees demand reads only (the background walk would compete
#: for the same cores and make "cold" depend on how long a step took).
BENCH_CONFIG = """\
# written by bench/ for `lazylayer daemon`, `mount` and `umount` during benchmarks
[daemon]
log_level = "WARNING"

[background]
enabled = false
"""


def lazylayer_command() -> list[str]:
    """The `lazylayer` console script of this interpreter's environment (what users type)."""
    script = Path(sys.executable).with_name("lazylayer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lazylayer.daemon.cli.main"]


def write_config(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_CONFIG)
    return path


@dataclass
class LazyDaemon:
    area: Path
    config: Path
    workers: int
    process: subprocess.Popen[bytes]
    run_dir: Path
    log_path: Path
    targets: list[Path] = field(default_factory=list)

    @property
    def mountpoint(self) -> Path:
        return self.area / "store"

    def _cli(self, *args: str, timeout: float = 600.0) -> None:
        command = [*lazylayer_command(), *args, "--config", str(self.config), "--run-dir", str(self.run_dir)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"`lazylayer {' '.join(args)}` failed: {done.stderr.strip()[-500:]}")

    def mount(self, ref: str, target: Path) -> None:
        self.targets.append(target)
        self._cli("mount", ref, str(target))

    def umount(self, target: Path) -> None:
        self._cli("umount", str(target))
        self.targets.remove(target)

    def push_profile(self, ref: str) -> None:
        """`lazylayer profile push REF`: the recording under way is stored, then pushed."""
        self._cli("profile", "push", ref)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self) -> None:
        """Until the control socket answers and every spawned worker has announced itself."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"lazylayer daemon exited with {self.process.returncode}: {self.log()[-800:]}")
            try:
                status = call(str(self.run_dir), "status", timeout=2.0)
                if sum(1 for w in status["workers"]["workers"] if w["capacity"] > 0) >= self.workers:
                    return
            except LazyLayerError:
                pass
            time.sleep(0.01)  # start time is a figure of item 8
        raise BenchError(f"lazylayer daemon not ready after {READY_TIMEOUT:.0f} s: {self.log()[-800:]}")

    def wait_mounted(self) -> None:
        wait_for_mount(self.mountpoint, self.process, self.log)

    def stop(self) -> None:
        """SIGTERM (the daemon unmounts its views and its store), then make sure nothing of ours
        stays mounted even if it misbehaved."""
        for target in list(self.targets):
            try:
                self.umount(target)
            except (BenchError, subprocess.TimeoutExpired):
                pass
        stop_process(self.process)
        unmount_under(self.area)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def is_mounted(path: Path) -> bool:
    return any(m.mountpoint == str(path) for m in mounts.mounts())


def wait_for_mount(mountpoint: Path, process: subprocess.Popen[bytes], log: Callable[[], str]) -> None:
    """Until ``mountpoint`` is a mount (polled every 5 ms: the wait is a measured figure)."""
    wait_until(lambda: is_mounted(mountpoint), process, log, f"{mountpoint} not mounted")


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Callable[[], str],
               failure: str) -> None:
    """Until ``ready()`` (polled every 5 ms); the process exiting first, or READY_TIMEOUT passing
    (``failure`` says what did not happen), is a BenchError with the tail of its log."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise BenchError(f"{process.args[0]} exited with {process.returncode}: {log()[-800:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"{failure} after {READY_TIMEOUT:.0f} s: {log()[-800:]}")
        time.sleep(0.005)


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount at or below ``root``, deepest first."""
    prefix = os.path.abspath(root)
    found = {m.mountpoint for m in mounts.mounts() if m.mountpoint == prefix or m.mountpoint.startswith(prefix + "/")}
    for mountpoint in sorted(found, key=len, reverse=True):
        try:
            mounts.unmount(mountpoint, lazy=True)
        except LazyLayerError:
            pass


def start_daemon(area: Path, cache_dir: Path, workers: int, config: Path, *, until_mounted: bool = False
                 ) -> LazyDaemon:
    """`lazylayer daemon --workers N --mountpoint AREA/store --cache-dir C --run-dir R` in the
    foreground, returned once it serves: every worker announced, or with ``until_mounted`` as
    soon as the layer store is mounted (what a container runtime waits for, and all the Go peer
    offers to wait on: item 8's "store start")."""
    area.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="llb-", dir="/tmp"))  # ipc:// paths must stay short
    log_path = area / "daemon.log"
    command = [*lazylayer_command(), "daemon", "--config", str(config), "--workers", str(workers),
               "--mountpoint", str(area / "store"), "--cache-dir", str(cache_dir), "--run-dir", str(run_dir)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=die_with_parent())
    daemon = LazyDaemon(area, config, workers, process, run_dir, log_path)
    try:
        daemon.wait_mounted() if until_mounted else daemon.wait_ready()
    except BaseException:
        daemon.stop()
        raise
    return daemon


@contextmanager
def lazy_session(area: Path, cache_dir: Path, workers: int, config: Path) -> Iterator[LazyDaemon]:
    """A daemon for one group of measurements; stopped (and everything unmounted) afterwards."""
    daemon = start_daemon(area, cache_dir, workers, config)
    try:
        yield daemon
    finally:
        daemon.stop()
