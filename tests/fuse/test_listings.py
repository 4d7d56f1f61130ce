"""Whole listings of layer directories are kept by the front (daemon/listings.py): a directory
listed again is answered from them, complete, in the same order."""

from __future__ import annotations

import os
from pathlib import Path

import pyfuse3
import pytest

from lazylayer.daemon.listings import Listings
from lazylayer.shared.store.metadata import NodeRef
from tests.fuse.daemonproc import start_daemon
from tests.support.layers import build_layer, directory, file
from tests.support.registry import Layer, RunningRegistry, push_image

#: more than one page of the front's readdir (fs._READDIR_PAGE)
NAMES = sorted(f"f{i:05d}" for i in range(2500))


def listing(n: int) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
    return [(b"x%d" % i, pyfuse3.EntryAttributes()) for i in range(n)]


def test_listings_are_bounded_by_entries_least_recently_opened_first_out():
    listings = Listings(max_entries=100)
    listings.put(NodeRef(1, 1), listing(20))
    listings.put(NodeRef(1, 2), listing(20))
    listings.put(NodeRef(1, 3), listing(26))  # over a quarter of the bound: not kept
    assert listings.get(NodeRef(1, 3)) is None
    assert listings.get(NodeRef(1, 1)) is not None  # now the most recent
    for node in range(4, 8):
        listings.put(NodeRef(1, node), listing(20))
    assert listings.get(NodeRef(1, 2)) is None  # 120 entries: the least recently opened went
    assert listings.get(NodeRef(1, 1)) is not None
    listings.put(NodeRef(1, 8), listing(20))
    assert listings.get(NodeRef(1, 4)) is None  # 1 was opened again just now
    assert all(listings.get(NodeRef(1, node)) is not None for node in (1, 5, 6, 7, 8))


@pytest.fixture(scope="module")
def big_dir(registry: RunningRegistry) -> str:
    built = build_layer([directory("big/"), *[file(f"big/{name}", name.encode()) for name in NAMES]])
    push_image(registry, "fuse/listings", "v1",
               [Layer(built.blob, annotations=dict(built.result.annotations()), diff_id=built.result.diff_id)])
    return f"{registry.host}/fuse/listings:v1"


def test_a_directory_listed_again_is_whole(big_dir: str, tmp_path: Path):
    daemon = start_daemon(tmp_path / "d", workers=1,
                          config={"background": {"enabled": False}, "prefetch": {"enabled": False}})
    try:
        diff = Path(daemon.call("image", {"ref": big_dir})["layers"][0]["path"])
        first = sorted(os.listdir(diff / "big"))
        again = [sorted(os.listdir(diff / "big")) for _ in range(2)]
        with os.scandir(diff / "big") as it:
            sizes = {e.name: e.stat(follow_symlinks=False).st_size for e in it}
    finally:
        daemon.stop()
    assert first == again[0] == again[1] == NAMES
    assert sizes == {name: len(name) for name in NAMES}
