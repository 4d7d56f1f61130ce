"""Layer records and metadata in the store: counts, idempotent and racing registration, ids
stable across stores and processes, record updates, removal, the one-txn range read."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import CacheError, NotFoundError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import LayerState, Layers
from lazylayer.shared.store.merged import MergedViews
from lazylayer.shared.estargz.toc import ModTime
from lazylayer.shared.store.metadata import Metadata, packed
from lazylayer.shared.store.reads import read_range
from tests.conformance.store_view import to_toc_chunk
from tests.store.procs import MiB
from tests.store.test_processes import finish, spawn
from tests.support.layers import blockdev, build_layer, chardev, directory, fifo, file, hardlink, symlink

SAMPLE = b"qwertyuiopasdfghjk"


@pytest.fixture
def store(tmp_path):
    with open_store(StoreOptions(str(tmp_path / "cache"), map_size=64 * MiB)) as s:
        yield s


def register(store, layer):
    toc = BlobReader.open(BytesSource(layer.blob)).toc
    return Layers(store).register(layer.digest, len(layer.blob), toc, verified=True)


# upstream metadata suite: numOfNodes (root + landmark + entries; hardlinks share a node)
@pytest.mark.parametrize("items,nodes", [
    ([], 2),
    ([file("foo", b"foofoo"), directory("bar/"), file("bar/baz.txt", b"b"), file("xxx.txt", b"x"),
      file("y.txt")], 7),
    ([directory("foo/"), directory("foo/bar/"), file("foo/bar/baz.txt", b"t"), file("foo/bar/xxxx", b"x"),
      file("foo/bar/yyy", b"y"), directory("foo/a/"), directory("foo/a/1/"), file("foo/a/1/2", b"1")], 10),
    ([file("foo", b"foofoo"), directory("bar/"), hardlink("bar/foolink", "foo"),
      hardlink("bar/foolink2", "bar/foolink"), directory("bar/1/"), file("bar/1/baz.txt", b"t"),
      hardlink("barlink", "bar/1/baz.txt"), symlink("foosym", "bar/foolink2")], 7),
    ([directory("bar/"), file("bar/../bar///////////////////foo"), chardev("bar/cdev", 10, 11),
      blockdev("bar/bdev", 100, 101), fifo("bar/fifo")], 7),
    ([directory("foo/"), file("foo/small", SAMPLE[:2]), file("foo/large", SAMPLE)], 5),
])
def test_node_counts(store, items, nodes):
    assert register(store, build_layer(items)).node_count == nodes


def test_chunk_count_and_lookup(store):
    record = register(store, build_layer([directory("foo/"), file("foo/large", SAMPLE)], chunk_size=4))
    meta = Metadata(store)
    ref = meta.resolve(record.root, "foo/large")
    chunks = meta.all_chunks(ref)
    assert len(chunks) == 1 + len(SAMPLE) // 4
    assert [c.chunk_offset for c in chunks] == list(range(0, len(SAMPLE), 4))
    assert [c.chunk_offset for c in meta.chunks_covering(ref, 5, 4)] == [4, 8]
    assert [c.chunk_offset for c in meta.chunks_covering(ref, 17, 100)] == [16]
    assert meta.chunks_covering(ref, 18, 5) == []
    assert meta.chunks_covering(ref, 0, 0) == []


def test_range_read_reports_misses_then_serves_hits(store):
    layer = build_layer([file("f", b"0123456789")], chunk_size=3)
    record = register(store, layer)
    meta, chunks = Metadata(store), ChunkStore(store)
    ref = meta.resolve(record.root, "f")
    first = read_range(meta, chunks, ref, 10, 2, 5)
    assert first.data is None and [c.chunk_offset for c in first.missing] == [0, 3, 6]
    reader = BlobReader.open(BytesSource(layer.blob))
    chunks.put(first.missing[0].digest, reader.read_chunk(to_toc_chunk(first.missing[0])))
    assert [c.chunk_offset for c in read_range(meta, chunks, ref, 10, 2, 5).missing] == [3, 6]
    for chunk in first.missing[1:]:
        chunks.put(chunk.digest, reader.read_chunk(to_toc_chunk(chunk)))
    hit = read_range(meta, chunks, ref, 10, 2, 5)
    assert hit.data == b"23456"
    assert hit.used == tuple(c.data_key for c in first.missing)
    assert read_range(meta, chunks, ref, 10, 9, 5).missing  # last chunk not cached yet
    assert read_range(meta, chunks, ref, 10, 10, 5).data == b""


def test_registering_twice_is_idempotent(store):
    layer = build_layer([file("a", b"1")])
    first = register(store, layer)
    again = register(store, layer)
    assert again == first
    other = register(store, build_layer([file("b", b"2")]))
    assert other.layer_id == first.layer_id + 1
    impostor = build_layer([file("c", b"3")])
    with pytest.raises(CacheError):
        toc = BlobReader.open(BytesSource(impostor.blob)).toc
        Layers(store).register(layer.digest, len(impostor.blob), toc, verified=True)


def test_two_processes_racing_to_register_agree(tmp_path):
    layer = build_layer([directory("d/"), file("d/a", b"1"), hardlink("d/b", "d/a"), file("z", b"2"),
                         file("x/y/z", b"3")])
    blob = tmp_path / "layer.blob"
    blob.write_bytes(layer.blob)
    path = str(tmp_path / "cache")
    open_store(StoreOptions(path, map_size=64 * MiB, chunk_budget=40 * MiB)).close()
    procs = [spawn("register", path, 64, 40, blob, layer.digest) for _ in range(3)]
    results = [json.loads(finish(p)) for p in procs]
    assert all(r == results[0] for r in results)
    assert results[0]["ids"]["d/a"] == results[0]["ids"]["d/b"]
    # A fresh store (another machine, or after a wipe) assigns the same node ids.
    other = json.loads(finish(spawn("register", str(tmp_path / "other"), 64, 40, blob, layer.digest)))
    assert other["ids"] == results[0]["ids"]
    with open_store(StoreOptions(path, map_size=64 * MiB, chunk_budget=40 * MiB)) as store:
        assert len(Layers(store).all()) == 1


def test_record_updates_and_removal(store):
    layers = Layers(store)
    layer = build_layer([directory("d/"), file("d/f", b"abc")])
    record = register(store, layer)
    assert record.state is LayerState.REGISTERED and record.prefetch_end == 0
    layers.update(layer.digest, state=LayerState.READY, prefetch_size=7)
    layers.add_fetched(layer.digest, 100, read_time=123.0)
    layers.add_fetched(layer.digest, 50)
    updated = layers.set_error(layer.digest, "registry said 500")
    assert (updated.state, updated.prefetch_size, updated.fetched_bytes, updated.last_read, updated.last_error) == (
        LayerState.READY, 7, 150, 123.0, "registry said 500")
    assert layers.get(layer.digest) == updated == layers.by_id(record.layer_id)
    assert layers.add_fetched(layer.digest, 1 << 40).fetched_bytes == record.blob_size  # capped at the blob
    meta = Metadata(store)
    assert meta.resolve(record.root, "d/f")
    assert layers.remove(layer.digest)
    assert layers.get(layer.digest) is None and layers.by_id(record.layer_id) is None
    with pytest.raises(NotFoundError):
        meta.resolve(record.root, "d/f")
    assert meta.getattr(record.root) is None
    assert store.read(lambda txn: txn.stat(store.db("file_chunks"))["entries"]) == 0
    with pytest.raises(NotFoundError):
        layers.update(layer.digest, state=LayerState.FAILED)
    assert register(store, layer).layer_id != record.layer_id  # ids are never reused


def test_readdir_cursor_pages(store):
    record = register(store, build_layer([file(f"d/{i:03d}", b"x") for i in range(50)]))
    meta = Metadata(store)
    d = meta.resolve(record.root, "d")
    seen: list[bytes] = []
    after = None
    while page := meta.readdir(d, after=after, limit=7):
        seen += [name for name, _ in page]
        after = page[-1][0]
    assert seen == [f"{i:03d}".encode() for i in range(50)]


def test_readonly_front_reads_what_a_writer_registered(tmp_path):
    path = str(tmp_path / "cache")
    layer = build_layer([file("f", b"hello")])
    with open_store(StoreOptions(path, map_size=64 * MiB)) as writer:
        register(writer, layer)
    with open_store(StoreOptions(path, map_size=64 * MiB), readonly=True) as front:
        record = Layers(front).require(layer.digest)
        attr = Metadata(front).getattr(Metadata(front).resolve(record.root, "f"))
        assert attr is not None and attr.size == 5


def test_merged_view_records(store):
    bottom, top = build_layer([file("a", b"1")]), build_layer([file("b", b"2")])
    register(store, bottom), register(store, top)
    views = MergedViews(store)
    stack = [bottom.digest, top.digest]
    with pytest.raises(NotFoundError):
        views.create([bottom.digest, "sha256:" + "0" * 64])
    view = views.create(stack)
    assert views.create(stack) == view == views.get(stack)
    assert views.get(list(reversed(stack))) is None  # order matters
    meta = Metadata(store)
    assert [name for name, _ in meta.readdir(view.root)] == [b"a", b"b"]
    assert views.remove(stack) and views.get(stack) is None
    assert meta.getattr(view.root) is None and meta.readdir(view.root) == []


_row_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.lists(_row_values, max_size=10))
def test_rows_are_packed_exactly_as_msgpack_packs_them(value):
    """The front decodes rows with msgpack; registration encodes them with msgspec (faster)."""
    assert packed(value) == msgpack.packb(value)


def test_a_toc_time_is_packed_as_the_plain_int_it_is():
    assert packed([ModTime(1_700_000_000)]) == msgpack.packb([1_700_000_000])
    with pytest.raises(NotImplementedError):
        packed([object()])
