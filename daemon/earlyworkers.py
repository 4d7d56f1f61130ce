"""The workers `lazylayer daemon` starts first thing, before the front's own imports.

Why: the front's imports (trio, pyfuse3, ZeroMQ and our stacks) take about half a second, and so
do a worker's. Started after them, the workers were ready a second after launch and the first
layer resolve waited for them. Started first, they import on the other core while the front
imports and mounts, and they import once: one process (workers/prefork.py) imports the worker
modules and forks all of them, instead of every worker importing them on the same two cores.

The forking process exits once it has forked; this process is a child subreaper until then, so
the workers become its own children, which the pool's spawner adopts (daemon/spawner.py,
`AdoptedProcess`) and supervises like the workers it execs later. Nothing here imports trio,
pyfuse3 or ZeroMQ.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
from typing import Sequence

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> None:
    if ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


class EarlyWorkers:
    """``count`` workers forked by workers/prefork.py; their pids are read from a pipe when first
    needed (the forking process writes them ~0.4 s after its launch, when its imports are done).
    The forker is launched before the daemon has read its config (`launch`) and told what to fork
    once it has (`begin`): its imports then overlap the daemon's own from the first moment."""

    def __init__(self, count: int, forker: subprocess.Popen[bytes] | None = None, pid_fd: int | None = None,
                 args_fd: int | None = None, failure: str = "") -> None:
        self.count = count
        self._forker = forker
        self._pid_fd = pid_fd
        #: where `begin` writes the workers' count and arguments (the forker waits on it)
        self._args_fd = args_fd
        #: why the forker could not be launched: said by `begin` if there are workers to start
        #: (before it the daemon's logging is not set up, and the daemon may not start at all)
        self._failure = failure
        self._pids: list[int] | None = None if forker is not None else []
        self._codes: dict[int, int] = {}

    @classmethod
    def launch(cls) -> EarlyWorkers:
        """Start the forker importing, before this process has even read its config: it learns
        how many workers to fork, and their arguments, from `begin`. Nothing is open yet in this
        process, so the forker inherits nothing but the two pipes."""
        try:
            _set_subreaper(True)  # without it the workers would not be ours to supervise
        except OSError as exc:  # the spawner starts them, with its backoff and its log line
            return cls(0, failure=str(exc))
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        args_r, args_w = os.pipe2(os.O_CLOEXEC)
        try:
            forker = subprocess.Popen(
                [sys.executable, "-m", "lazylayer.workers.prefork", "--pid-fd", str(pid_w), "--args-fd", str(args_r)],
                stdin=subprocess.DEVNULL, pass_fds=(pid_w, args_r))
        except OSError as exc:
            for fd in (pid_r, args_w):
                os.close(fd)
            _set_subreaper(False)
            return cls(0, failure=str(exc))
        finally:
            os.close(pid_w)
            os.close(args_r)
        return cls(0, forker, pid_r, args_w)

    def begin(self, count: int, worker_command: Sequence[str]) -> None:
        """Have the launched forker fork ``count`` workers running ``worker_command``'s arguments
        (after ``-m module``); with none to fork it is stopped at once."""
        if self._args_fd is None:  # no forker: the spawner execs them all
            self.count = count
            if self._failure and count > 0:
                log.warning("cannot start the early workers: %s", self._failure)
            return
        if count < 1:
            self.stop()
            return
        self.count = count
        payload = "\0".join([str(count), *worker_command[3:]]).encode()
        try:
            with open(self._args_fd, "wb") as args:  # closing it is the forker's end of input
                args.write(payload)
        except BrokenPipeError:  # it died importing: it forked nothing, `pid` says so
            pass
        finally:
            self._args_fd = None

    def ready(self, timeout: float = 0.0) -> bool:
        """The pids have been written (or the forker is gone), waiting up to ``timeout`` seconds:
        `pid` will not block."""
        if self._pids is not None:
            return True
        assert self._pid_fd is not None
        return bool(select.select([self._pid_fd], [], [], timeout)[0])

    def pid(self, index: int) -> int | None:
        """The ``index``th worker's pid; None when it was never forked. Blocks until the pids are
        known (ask `ready` first where blocking matters)."""
        pids = self._resolve()
        return pids[index] if index < len(pids) else None

    def poll(self, index: int) -> int | None:
        """Its exit status once it has exited (reaped here), else None; -1 for one never forked."""
        pid = self.pid(index)
        if pid is None:
            return -1
        if pid not in self._codes:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._codes[pid] = os.waitstatus_to_exitcode(status)
        return self._codes.get(pid)

    def wait(self, index: int) -> int:
        """Its exit status, waiting for it (call once its pidfd is readable)."""
        pid = self.pid(index)
        if pid is None:
            return -1
        if pid not in self._codes:
            self._codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return self._codes[pid]

    def kill(self, index: int, signum: int) -> None:
        """Signal a worker that has not been reaped (a reaped pid may belong to another process now)."""
        pid = self.pid(index)
        if pid is not None and self.poll(index) is None:
            os.kill(pid, signum)

    def stop(self) -> None:
        """Kill the ones still running (the daemon ends before its spawner took them)."""
        if self._args_fd is not None:  # never begun: the forker is told nothing, and killed
            os.close(self._args_fd)
            self._args_fd = None
        if self._forker is not None and self._forker.poll() is None:
            self._forker.kill()  # what it has not forked yet is not started at all
        self._resolve()  # the forker reaped, the subreaper flag dropped
        for index in range(self.count):
            if self.poll(index) is None:
                self.kill(index, signal.SIGKILL)
                self.wait(index)

    def _resolve(self) -> list[int]:
        if self._pids is None:
            assert self._forker is not None and self._pid_fd is not None
            chunks = []
            while chunk := os.read(self._pid_fd, 4096):
                chunks.append(chunk)
            os.close(self._pid_fd)
            # its exit has handed its children to us (we are a subreaper until it is reaped)
            code = self._forker.wait()
            _set_subreaper(False)
            self._pids = [int(line) for line in b"".join(chunks).split()]
            if len(self._pids) < self.count and code != -signal.SIGKILL:  # not our stop's kill
                log.warning("the worker forker (status %s) started %d of %d workers; the rest start one by one",
                            code, len(self._pids), self.count)
        return self._pids
