"""A real worker process with test jobs: ``python -m tests.support.ipc_worker --endpoint E ...``.

It runs the production worker loop (lazylayer.workers.main) with a handler table made for
exercising the pool. Jobs tell the test what they do through a Unix datagram socket
(``params["notify"]``), so tests await events instead of sleeping:

- ``echo``: returns ``{"pid", "params", "nice"}`` (its thread's nice value) and its payloads unchanged.
- ``gate``: reports ``start``, then blocks until the file ``params["gate"]`` exists.
- ``fail``: raises the typed error named by ``params["error"]`` (``registry`` carries a status).
- ``crash``: reports ``start``, then dies at once (``os._exit``), like a segfaulting fetch.

Each report is one datagram ``"<event> <kind> <pid> <tag>"`` (tag = ``params["tag"]``).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from lazylayer.shared.errors import DigestMismatchError, RegistryError
from lazylayer.workers.jobs import BUILTIN_HANDLERS, Handler, Job, JobResult
from lazylayer.workers.main import main

GATE_LIMIT = 60.0  # a forgotten gate must not leave an orphan process behind forever
GATE_POLL = 0.002


def _report(job: Job, event: str) -> None:
    path = job.params.get("notify")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"{event} {job.kind} {os.getpid()} {job.params.get('tag', '-')}".encode(), path)


def echo(job: Job) -> JobResult:
    _report(job, "start")
    params = {k: v for k, v in job.params.items() if k != "notify"}
    nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    return JobResult({"pid": os.getpid(), "params": params, "nice": nice}, list(job.payloads))


def gate(job: Job) -> JobResult:
    _report(job, "start")
    deadline = time.monotonic() + GATE_LIMIT
    while not os.path.exists(job.params["gate"]):
        if time.monotonic() > deadline:
            raise TimeoutError("gate never opened")
        time.sleep(GATE_POLL)
    return JobResult({"pid": os.getpid(), "tag": job.params.get("tag")})


def fail(job: Job) -> JobResult:
    if job.params["error"] == "registry":
        raise RegistryError("registry said no", status=job.params.get("status"))
    if job.params["error"] == "digest":
        raise DigestMismatchError("chunk 0", "sha256:aa", "sha256:bb")
    raise ValueError("an untyped bug in a handler")


def crash(job: Job) -> JobResult:
    _report(job, "start")
    sys.stderr.flush()
    os._exit(3)


HANDLERS: dict[str, Handler] = {**BUILTIN_HANDLERS, "echo": echo, "gate": gate, "fail": fail, "crash": crash}

if __name__ == "__main__":
    sys.exit(main(handlers=HANDLERS))
