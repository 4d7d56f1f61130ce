"""Port of upstream's testPrefetch: the prefetch range from the landmarks, and that reading a
prefetched file afterwards never touches the blob."""

from __future__ import annotations

import pytest

from lazylayer.shared.errors import CorruptCacheError
from lazylayer.shared.store.env import StoreOptions, open_store
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


def test_a_damaged_chunk_row_is_a_corrupt_cache_not_a_crash(store):
    view = view_of(store, [file("foo.txt", FOO)], prefetch=("foo.txt",))
    with store.env.begin(write=True) as txn:
        with txn.cursor(db=store.db("file_chunks")) as cursor:
            assert cursor.first()
            cursor.put(cursor.key(), b"\x93\x01\x02\x03")  # three fields where six belong
    with pytest.raises(CorruptCacheError):
        view.meta.prefetch_chunks(view.record.layer_id, view.record.prefetch_end)
