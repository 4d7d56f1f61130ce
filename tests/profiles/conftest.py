"""Fixtures for the profile tests: one registry per module, a fault proxy in front of it (it
counts what the registry is asked), and an image whose start reads many small files scattered
among files nobody reads."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.fetchstack import ImageTree, PushedImage, push_image_trees
from tests.support.registry import RunningRegistry, registry  # noqa: F401  (module-scoped fixture)

#: files the test program reads (lib/mNNN.py), each beside an unread one (lib/mNNN.dat)
READ_FILES = 200


def make_tree(root: Path, seed: int = 16) -> Path:
    rng = random.Random(seed)
    lib = root / "lib"
    lib.mkdir(parents=True)
    for i in range(READ_FILES):
        (lib / f"m{i:03d}.py").write_bytes(rng.randbytes(2048) + b"# module %d\n" % i * 200)
        (lib / f"m{i:03d}.dat").write_bytes(rng.randbytes(24 << 10))
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_text("answer = 42\n")
    return root


@pytest.fixture(scope="module")
def proxy(registry: RunningRegistry) -> Iterator[FaultProxy]:
    running = FaultProxy(registry.host)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def app_image(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    root = make_tree(tmp_path_factory.mktemp("tree") / "app")
    return push_image_trees(registry, "profiles/app", "v1", [ImageTree(root)])


def blob_reads(proxy: FaultProxy) -> int:
    """Ranged blob GETs the registry answered since the proxy's list was last cleared, but the
    1-byte probes a registry client makes once to find where a blob is served."""
    with proxy.lock:
        return sum(1 for s in proxy.seen if s.method == "GET" and "/blobs/" in s.path and s.range
                   and s.range != "bytes=0-0")
