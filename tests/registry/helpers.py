"""Shared bits of the registry tests: the upstream fixture image pushed to a test registry,
and a client whose retry waits are recorded (and kept short) instead of slept in full."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.reference import Reference, parse_reference
from lazylayer.workers.registry.retry import Backoff
from tests.support.registry import Layer, RunningRegistry, push_image


@dataclass
class SleepRecorder:
    """Records each backoff delay; sleeps a bounded sliver of it so tests stay fast."""

    delays: list[float] = field(default_factory=list)

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        time.sleep(min(delay, 0.01))


def make_client(options: RegistryOptions | None = None, credentials=None, *, retries: int = 3,
                sleeper: SleepRecorder | None = None) -> RegistryClient:
    options = options or RegistryOptions(max_retries=retries)
    backoff = Backoff(0.001, 5.0, retries, sleep=sleeper or SleepRecorder())
    return RegistryClient(options, credentials or (lambda registry: None), backoff=backoff)


@dataclass
class PushedFixture:
    ref: Reference
    facts: dict
    blob: bytes
    manifest_digest: str

    @property
    def digest(self) -> str:
        return self.facts["blob_digest"]

    def at(self, host: str) -> Reference:
        """The same image, addressed through another host (a proxy in front of the registry)."""
        return parse_reference(f"{host}/{self.ref.repository}:{self.ref.tag}")


def push_fixture(reg: RunningRegistry, fixtures_dir: Path, tag: str = "esgz",
                 repository: str = "fixtures/features") -> PushedFixture:
    facts = json.loads((fixtures_dir / f"features-{tag}.json").read_text())
    blob = (fixtures_dir / facts["blob"]).read_bytes()
    layer = Layer(blob, facts["media_type"], facts["annotations"], facts["diff_id"])
    digest, _ = push_image(reg, repository, tag, [layer])
    return PushedFixture(parse_reference(f"{reg.host}/{repository}:{tag}"), facts, blob, digest)
