"""Fixtures for the FUSE tests: one registry per module, the default 3-layer test image on it,
and a daemon per module (real process, real mount; always unmounted at teardown)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.support.fetchstack import PushedImage, default_trees, push_image_trees
from tests.support.registry import RunningRegistry, registry  # noqa: F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def app_image(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    return push_image_trees(registry, "fuse/app", "v1", default_trees(tmp_path_factory.mktemp("trees")))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path_factory.mktemp("daemon"), workers=1)
    try:
        yield running
    finally:
        running.stop()


def tree_of(root: Path) -> dict[str, tuple]:
    """Everything a merged-view comparison looks at, by relative path (root excluded)."""
    import os
    import stat

    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    detail: object = f.read()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            else:
                detail = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), detail)
    return out
