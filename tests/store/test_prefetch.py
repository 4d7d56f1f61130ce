"""Port of upstream's testPrefetch: the prefetch range from the landmarks, and that reading a
prefetched file afterwards never touches the blob."""

from __future__ import annotations

import copy

import pytest

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import CorruptCacheError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import PREFETCH_LANDMARK
from lazylayer.shared.estargz.tocstream import TOCStream
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import Layers
from lazylayer.shared.store.metadata import Metadata
from tests.conformance.store_view import StoreLayerView
from tests.store.procs import MiB
from tests.support.layers import build_layer, directory, file

FOO = b"0123456789"
BAR = b"abcdefghij"


@pytest.fixture
def store(tmp_path):
    with open_store(StoreOptions(str(tmp_path / "cache"), map_size=64 * MiB)) as s:
        yield s


def view_of(store, items, prefetch=()):
    layer = build_layer(items, chunk_size=3, prefetch=prefetch)
    return StoreLayerView(store, layer.blob, layer.digest)


def test_no_prefetch_list_means_no_prefetch(store):
    view = view_of(store, [file("foo.txt", FOO), file("bar.txt", BAR)])
    assert view.record.prefetch_end == 0  # .no.prefetch.landmark
    reads = view.source.reads
    assert view.prefetch() == 0
    assert view.source.reads == reads
    assert view.chunks.stats().chunks == 0


@pytest.mark.parametrize("items,target", [
    ([file("foo.txt", FOO), file("bar.txt", BAR)], "foo.txt"),
    ([directory("dir/"), file("dir/foo.txt", FOO), file("bar.txt", BAR)], "dir/foo.txt"),
])
def test_prefetch_caches_exactly_the_listed_files(store, items, target):
    view = view_of(store, items, prefetch=(target,))
    assert view.record.prefetch_end and view.record.prefetch_end > 0
    assert view.prefetch() == 4  # ceil(10 / 3)
    assert view.chunks.stats().chunks == 4
    reads = view.source.reads
    assert view.read(target, 0, 100) == FOO
    assert view.source.reads == reads  # served from the store alone
    assert view.read("bar.txt", 0, 100) == BAR
    assert view.source.reads > reads


def test_prefetch_chunks_take_whole_files_before_the_landmark_and_nothing_after(store):
    """Upstream filters per file: every chunk of a file whose first chunk starts before the
    end, none of a file after it, and a range past the blob takes every chunk in file order."""
    view = view_of(store, [file("foo.txt", FOO), file("bar.txt", BAR), file("baz.txt", FOO)],
                   prefetch=("foo.txt", "bar.txt"))
    meta, layer_id = view.meta, view.record.layer_id
    listed = meta.prefetch_chunks(layer_id, view.record.prefetch_end)
    every = meta.prefetch_chunks(layer_id, view.source.size + 1)
    # 4 chunks of 3 bytes per 10-byte file; the landmark file (at the end) has one more
    assert len(listed) == 8 and len(every) == 13
    assert all(c.blob_offset < view.record.prefetch_end for c in listed)
    assert [c.chunk_offset for c in listed] == [0, 3, 6, 9] * 2
    assert set(listed) < set(every)


def test_the_node_bound_stops_the_walk_after_the_prefetched_files(store):
    """Registration bounds the node ids of the prefetched files (they come first in an eStargz),
    so a prefetch walks their rows, not every chunk row of the layer."""
    items = [file(f"f{i}.txt", FOO) for i in range(20)]
    view = view_of(store, items, prefetch=("f0.txt", "f1.txt"))
    meta, record = view.meta, view.record
    bounded = meta.prefetch_chunks(record.layer_id, record.prefetch_end, record.prefetch_nodes)
    assert bounded == meta.prefetch_chunks(record.layer_id, record.prefetch_end)
    assert len(bounded) == 8
    # root, f0.txt, f1.txt and the (hidden) landmark: the other 18 files lie beyond the bound
    assert record.prefetch_nodes == meta.resolve(record.root, "f1.txt").node_id + 1
    assert meta.resolve(record.root, "f2.txt").node_id > record.prefetch_nodes


def test_a_prefetched_file_listed_after_the_landmark_is_still_within_the_bound(store):
    """A TOC out of blob order: the file whose payload starts first is listed after the
    landmark. The bound grows to cover it, so the bounded walk still finds it."""
    layer = build_layer([file("foo.txt", FOO), file("bar.txt", BAR), file("baz.txt", FOO)], chunk_size=3,
                        prefetch=("foo.txt",))
    toc = BlobReader.open(BytesSource(layer.blob)).toc
    foo = [e for e in toc.entries if e.name == "foo.txt"]
    rest = [e for e in toc.entries if e.name != "foo.txt"]
    after = max(i for i, e in enumerate(rest) if e.name == PREFETCH_LANDMARK or e.name == "bar.txt")
    reordered = copy.copy(toc)
    reordered.entries = rest[:after + 1] + foo + rest[after + 1:]
    record = Layers(store).register(layer.digest, len(layer.blob), TOCStream.of(reordered), verified=True)
    meta = Metadata(store)
    foo_node = meta.resolve(record.root, "foo.txt").node_id
    assert foo_node <= record.prefetch_nodes
    bounded = meta.prefetch_chunks(record.layer_id, record.prefetch_end, record.prefetch_nodes)
    assert bounded == meta.prefetch_chunks(record.layer_id, record.prefetch_end)
    assert [c.chunk_offset for c in bounded] == [0, 3, 6, 9]


def test_a_damaged_chunk_row_is_a_corrupt_cache_not_a_crash(store):
    view = view_of(store, [file("foo.txt", FOO)], prefetch=("foo.txt",))
    with store.env.begin(write=True) as txn:
        with txn.cursor(db=store.db("file_chunks")) as cursor:
            assert cursor.first()
            cursor.put(cursor.key(), b"\x93\x01\x02\x03")  # three fields where six belong
    with pytest.raises(CorruptCacheError):
        view.meta.prefetch_chunks(view.record.layer_id, view.record.prefetch_end)
