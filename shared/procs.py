"""Child processes that the demo, the embedded registry, the benchmarks and the tests start.

Two rules every such child follows, so they live here once: it dies with the process that
started it (PR_SET_PDEATHSIG: a crashed or killed parent leaves no daemon serving and no registry
listening), and stopping it is polite first (its signal, so a daemon can unmount) and firm
after a grace period.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from typing import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``signum`` when its parent dies."""

    def preexec() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)

    return preexec


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
