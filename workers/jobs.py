"""What a worker runs: the job record, the handler signature, and the built-in `ping` job.

A handler is a plain blocking function: it runs in one of the worker's job threads, may do HTTP,
decompression and LMDB writes, and returns a :class:`JobResult` or raises (a LazyLayerError keeps
its kind on the wire; anything else becomes a `worker` error). Handlers never see ZeroMQ.
The fetcher jobs (resolve, fetch, prefetch, background, check) plug into the same table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from lazylayer.shared.protocol import Buffer


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    params: dict[str, Any]
    payloads: list[Buffer] = field(default_factory=list)


@dataclass(frozen=True)
class JobResult:
    result: dict[str, Any] = field(default_factory=dict)
    payloads: list[Buffer] = field(default_factory=list)


Handler = Callable[[Job], JobResult]
Handlers = Mapping[str, Handler]


def ping(job: Job) -> JobResult:
    """Health check: proves a worker is connected, dispatchable and running jobs."""
    return JobResult({"pid": os.getpid()})


BUILTIN_HANDLERS: dict[str, Handler] = {"ping": ping}
