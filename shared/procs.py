"""Child processes that the daemon, the demo, the embedded registry, the benchmarks and the tests start.

Two rules every such child follows, so they live here once: it dies with the process that
started it (a crashed or killed parent leaves no daemon serving, no registry listening and no
worker joining the next daemon), and stopping it is polite first (its signal, so a daemon can
unmount) and firm after a grace period.

Two ways to die with the parent. `die_with_parent` (PR_SET_PDEATHSIG) suits a child started from
the parent's main thread. The kernel sends that signal when the *thread* that forked the child
exits, so it cannot serve trio's ``open_process``, which forks from a cached worker thread that
exits after 10 idle seconds (the child would be killed then). A child started that way watches
its parent instead: `watch_parent` gives a pidfd that becomes readable when the parent exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from typing import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``signum`` when its parent dies."""

    def preexec() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)

    return preexec


def watch_parent(parent_pid: int) -> int:
    """A pidfd (poll it for reading) of ``parent_pid``, which must be our parent; readable once
    it has exited. Raises ProcessLookupError when the parent is gone already: a parent that died
    before we got here has left us reparented, so its pid is not our parent pid any more."""
    fd = os.pidfd_open(parent_pid)
    # Checked after opening: the pidfd then pins the process we checked, not a reused pid.
    if os.getppid() != parent_pid:
        os.close(fd)
        raise ProcessLookupError(f"process {parent_pid} that started us has exited")
    return fd


def stop_process(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 60.0) -> None:
    """Send ``signum`` and wait up to ``timeout`` seconds; then SIGKILL. No-op once it has exited."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
