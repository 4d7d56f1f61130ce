"""What `WorkerPool.status()` reports (the control socket's `status`, metrics): plain records,
apart from the pool so the pool module holds only the pool."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    pid: int
    capacity: int
    in_flight: int
    jobs_done: int
    jobs_failed: int
    last_heartbeat_age: float
    restarts: int


@dataclass(frozen=True)
class ProcessStatus:
    slot: int
    pid: int | None
    running: bool
    restarts: int
    backoff: float


@dataclass(frozen=True)
class PoolStatus:
    endpoint: str
    workers: list[WorkerStatus]
    processes: list[ProcessStatus]
    queued: dict[str, int]
    in_flight: int
    foreground_active: bool
    background_held: bool
    workers_lost: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
