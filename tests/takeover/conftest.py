"""A registry with the default 3-layer image, a holder and a front per test."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.daemonproc import RunningDaemon, daemon_config, start_daemon, unmount_under
from tests.support.fetchstack import PushedImage, default_trees, push_image_trees
from tests.support.registry import RunningRegistry, registry  # noqa: F401  (module-scoped fixture)
from tests.takeover.harness import Holder


@pytest.fixture(scope="module")
def app_image(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    return push_image_trees(registry, "takeover/app", "v1", default_trees(tmp_path_factory.mktemp("trees")))


@dataclass
class Stack:
    workdir: Path
    run_dir: Path
    holder: Holder
    front: RunningDaemon

    def restart_front(self) -> RunningDaemon:
        self.front = start_daemon(self.workdir, workers=1, run_dir=self.run_dir)
        return self.front


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    run_dir = Path(tempfile.mkdtemp(prefix="ll-to-", dir="/tmp"))
    config = daemon_config(tmp_path, run_dir)
    holder = Holder(config, run_dir, tmp_path / "holder.log")
    front = None
    try:
        front = start_daemon(tmp_path, workers=1, run_dir=run_dir)
        yield Stack(tmp_path, run_dir, holder, front)
    finally:
        if front is not None:
            front.stop()
        holder.stop()
        unmount_under(tmp_path)
