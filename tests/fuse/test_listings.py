"""Listings of layer directories are kept by the front, by directory (daemon/listings.py): a
directory listed page by page, or listed again, is answered from them, complete, in order."""

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


def list_whole(listings: Listings, ref: NodeRef, n: int) -> None:
    cursor = listings.cursor(ref)
    cursor.entries.extend(listing(n))
    cursor.exhausted = True
    listings.listed(ref, cursor)


def is_whole(listings: Listings, ref: NodeRef) -> bool:
    return listings.cursor(ref).exhausted


def test_whole_listings_are_bounded_by_entries_least_recently_used_first_out():
    listings = Listings(max_entries=100)
    list_whole(listings, NodeRef(1, 1), 20)
    list_whole(listings, NodeRef(1, 2), 20)
    list_whole(listings, NodeRef(1, 3), 26)  # over a quarter of the bound: not kept whole
    assert is_whole(listings, NodeRef(1, 1))  # now the most recent
    for node in range(4, 8):
        list_whole(listings, NodeRef(1, node), 20)
    assert not is_whole(listings, NodeRef(1, 2))  # 120 entries: the least recently used went
    assert is_whole(listings, NodeRef(1, 1))
    list_whole(listings, NodeRef(1, 8), 20)
    assert not is_whole(listings, NodeRef(1, 4))  # 1 was used again just now
    assert all(is_whole(listings, NodeRef(1, node)) for node in (1, 5, 6, 7, 8))


def test_a_listing_under_way_goes_on_where_it_stopped_and_the_last_one_stays():
    listings = Listings(max_entries=100, max_partial_entries=50)
    first = listings.cursor(NodeRef(1, 1))
    first.entries.extend(listing(30))
    first.after = b"x29"
    listings.listed(NodeRef(1, 1), first)
    assert listings.cursor(NodeRef(1, 1)) is first  # the next page goes on from here
    big = listings.cursor(NodeRef(1, 2))
    big.entries.extend(listing(80))  # more than the bound on its own
    big.exhausted = True
    listings.listed(NodeRef(1, 2), big)  # whole, but over a quarter of the whole bound
    assert listings.cursor(NodeRef(1, 2)) is big  # kept under way, as the last one listed
    assert listings.cursor(NodeRef(1, 1)) is not first  # the older one went to make room


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
