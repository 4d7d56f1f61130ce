"""What `lazylayer daemon` does before the front's imports: options, the run dir, the workers' command.

Why apart from service.py: the workers start before the front's imports (daemon/earlyworkers.py
says why), so what they need is here, and nothing in this module may import trio, pyfuse3 or
ZeroMQ. The run dir is locked before any worker starts, so workers never reach another daemon's
socket.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from lazylayer.shared.config import Config
from lazylayer.shared.errors import MountError
from lazylayer.shared.perms import private_dir

log = logging.getLogger(__name__)

#: what a daemon creates in its run dir; a clean stop removes them (the pid file last, under the lock)
RUN_FILES = ("control.sock", "workers.sock", "overlay")


@dataclass(frozen=True)
class DaemonOptions:
    config: Config
    #: the config file, handed to spawned workers (None: defaults + environment)
    config_path: str | None = None
    #: CLI flags ({"section.key": value}), re-applied on reload
    overrides: dict[str, Any] = field(default_factory=dict)
    #: refuse to start unless a holder has a connection to take over (`--takeover`)
    takeover: bool = False

    #: resolved once at start: resolving stats the path, which must never happen on our own
    #: mount from the loop's thread (it would wait for itself); only its parent is resolved, as
    #: a front that takes a live mount over must not stat it before it serves it
    mountpoint: str = field(init=False)
    run_dir: str = field(init=False)
    cache_dir: str = field(init=False)

    def __post_init__(self) -> None:
        mountpoint = os.path.abspath(self.config.daemon.mountpoint)
        object.__setattr__(self, "mountpoint", os.path.join(os.path.realpath(os.path.dirname(mountpoint)),
                                                            os.path.basename(mountpoint)))
        object.__setattr__(self, "run_dir", os.path.abspath(self.config.daemon.run_dir))
        object.__setattr__(self, "cache_dir", os.path.abspath(self.config.cache.dir))


def worker_command(options: DaemonOptions) -> list[str]:
    command = [sys.executable, "-m", "lazylayer.workers.main", "--endpoint", f"ipc://{options.run_dir}/workers.sock",
               "--cache-dir", options.cache_dir, "--log-level", options.config.daemon.log_level,
               "--parent-pid", str(os.getpid())]  # a killed daemon's workers must not join the next one
    if options.config_path:
        command += ["--config", options.config_path]
    return command


def lock_run_dir(run_dir: str) -> int:
    """One daemon per run dir: an flock on RUN/daemon.pid held for the daemon's life (released
    by the kernel when it dies, however it dies)."""
    private_dir(run_dir)
    fd = os.open(os.path.join(run_dir, "daemon.pid"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise MountError(f"another lazylayer daemon (pid {other or '?'}) is running with run dir {run_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def clean_run_dir(run_dir: str) -> None:
    """Remove our sockets and the (by now empty) overlay dir; a non-empty overlay dir holds a
    writable mount's state we did not make (e.g. one whose `record_mount` never reached us) and stays."""
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        try:
            if os.path.isdir(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.info("leaving %s: %s", path, exc.strerror)
    try:
        os.unlink(os.path.join(run_dir, "daemon.pid"))
    except FileNotFoundError:
        pass
