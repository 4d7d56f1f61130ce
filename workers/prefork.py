"""Start a daemon's first workers from one interpreter's imports: import once, fork N times.

Why: a worker's imports (requests, ZeroMQ, our format and store modules) cost ~0.4 s of CPU. At
daemon start every worker used to pay them at once, on the same two cores as the front's own
imports, so the first layer resolve waited for three interpreters. This process imports them once
and forks the workers. Forking is safe here because nothing is open yet: no ZeroMQ context, no
LMDB environment, no thread; each child makes its own, exactly as an exec'd worker does.

It is started before the daemon has read its config, so that its imports overlap the daemon's
own from the start; it reads the count and the workers' arguments from ``--args-fd`` when its
imports are done (end of input with nothing written: the daemon is not starting workers, exit).
It writes the children's pids to ``--pid-fd`` and exits. The daemon made itself a child subreaper
before starting it (daemon/earlyworkers.py), so the workers become the daemon's own children, which its
spawner supervises like any other; restarts are exec'd (`python -m lazylayer.workers.main`).

``python -m lazylayer.workers.prefork --pid-fd FD --args-fd FD``
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import Sequence

gc.disable()  # the imports below make ~100k objects and no cycle: collections would only cost time

from lazylayer.shared.procs import watch_parent  # noqa: E402
from lazylayer.workers import main as worker  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Fork the workers, write their pids, exit (this returns only on an error)."""
    parser = argparse.ArgumentParser(prog="lazylayer-prefork", description="fork lazylayer workers")
    parser.add_argument("--pid-fd", type=int, required=True, help="where the children's pids are written")
    parser.add_argument("--args-fd", type=int, required=True,
                        help="where the daemon writes the count and the workers' arguments, NUL-separated")
    args = parser.parse_args(argv)
    with open(args.args_fd, "rb") as source:  # the daemon writes it once it has read its config
        fields = source.read().decode().split("\0")
    if not fields[0]:  # the daemon stopped before it began the workers
        return 0
    count, worker_argv = int(fields[0]), fields[1:]
    parent_pid = _parent_pid(worker_argv)
    # opened here, while the daemon is still our parent (the check watch_parent makes); the
    # children inherit it, as their own parent is this short-lived process
    parent_fd = None
    if parent_pid is not None:
        try:
            parent_fd = watch_parent(parent_pid)
        except ProcessLookupError:
            print(f"lazylayer prefork: the daemon (pid {parent_pid}) is gone", file=sys.stderr)
            return 1
    pids: list[int] = []
    gc.freeze()  # the imports' objects are the workers' for life: no collection walks (or copies) them
    gc.enable()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(args.pid_fd)  # the daemon reads it to its end, which our exit makes
            sys.exit(worker.main(worker_argv, parent_fd=parent_fd))
        pids.append(pid)
    os.write(args.pid_fd, "".join(f"{pid}\n" for pid in pids).encode())
    os.close(args.pid_fd)
    # at once: the daemon waits for this exit (it hands the children over), and tearing down
    # an interpreter nobody uses any more only delays it
    sys.stderr.flush()
    os._exit(0)


def _parent_pid(worker_argv: Sequence[str]) -> int | None:
    parser = argparse.ArgumentParser(add_help=False)
    worker.add_arguments(parser)
    known, _ = parser.parse_known_args(list(worker_argv))
    return known.parent_pid


if __name__ == "__main__":
    sys.exit(main())
