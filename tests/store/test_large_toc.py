"""Large TOCs: registration streams the TOC (never the whole JSON, document or entry list in
memory), writes in batches, and publishes a layer only once all of it is written."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import pytest

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import DigestMismatchError
from lazylayer.shared.estargz.reader import BlobReader, open_toc
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import PENDING_PREFIX, Layers
from lazylayer.shared.store.metadata import Metadata
from tests.format.blobkit import BlobBuilder, sha
from tests.store.procs import MiB


@pytest.fixture
def store(tmp_path):
    with open_store(StoreOptions(str(tmp_path / "cache"), map_size=256 * MiB)) as s:
        yield s


def fifos(count: int, **fields) -> bytes:
    builder = BlobBuilder()
    for i in range(count):
        builder.add(name=f"d{i // 1000}/fifo-{i}", type="fifo", **fields)
    return builder.build()


def rows(store, db: str) -> int:
    return store.read(lambda txn: txn.stat(store.db(db))["entries"])


def test_registration_never_holds_the_toc_whole(store):
    """12,000 entries with a 4 KB user name each: 48 MB of JSON that compresses to little, far
    past the size decoded in one piece (tocstream.WHOLE_DOCUMENT). The names are not kept (a
    node keeps uid/gid), so memory must stay far below the JSON's size; holding the JSON text,
    the decoded document or every entry at once takes several times it (the code before
    streaming peaked at 3x the JSON's size)."""
    blob = fifos(12_000, uid=7, userName="u" * 4000)
    _, stream = open_toc(BytesSource(blob))
    tracemalloc.start()
    try:
        record = Layers(store).register(sha(blob), len(blob), stream, verified=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stream.json_size > 48_000_000
    assert record.node_count == 1 + 12 + 12_000
    assert peak < stream.json_size // 4, f"peak {peak} bytes for a {stream.json_size}-byte TOC"
    meta = Metadata(store)
    ref = meta.resolve(record.root, "d11/fifo-11999")
    assert meta.getattr(ref).uid == 7


def test_a_toc_failing_its_digest_at_the_end_registers_nothing(store):
    blob = fifos(3000)
    _, stream = open_toc(BytesSource(blob), toc_digest=sha(b"another TOC"))
    with pytest.raises(DigestMismatchError):
        Layers(store).register(sha(blob), len(blob), stream, verified=True)
    assert Layers(store).all() == [] and rows(store, "nodes") == rows(store, "dirents") == 0


_DIE_MIDWAY = """
import os, sys
from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.estargz.reader import open_toc
from lazylayer.shared.store import layerbuild
from lazylayer.shared.store.env import Store, StoreOptions, open_store
from lazylayer.shared.store.layers import Layers
layerbuild.BATCH_ROWS = 500
writes = Store.write
def write(self, fn, **kwargs):
    self.calls = getattr(self, "calls", 0) + 1
    if self.calls == 4:  # the id, two batches of rows: then the process dies
        os._exit(9)
    return writes(self, fn, **kwargs)
Store.write = write
blob = open(sys.argv[2], "rb").read()
with open_store(StoreOptions(sys.argv[1], map_size=256 << 20)) as store:
    Layers(store).register(sys.argv[3], len(blob), open_toc(BytesSource(blob))[1], verified=True)
"""


def test_a_registration_that_dies_midway_is_invisible_and_swept(tmp_path, store):
    blob = fifos(3000)
    digest = sha(blob)
    (tmp_path / "blob").write_bytes(blob)
    child = subprocess.run([sys.executable, "-c", _DIE_MIDWAY, store.options.path, str(tmp_path / "blob"), digest],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 9, child.stderr
    layers = Layers(store)
    assert layers.get(digest) is None and layers.all() == []
    assert 0 < rows(store, "nodes") + rows(store, "dirents") < 3000 * 2  # written, unreachable
    record = layers.register(digest, len(blob), open_toc(BytesSource(blob))[1], verified=True)
    # the dead registration's rows are gone: only the new layer's remain
    assert rows(store, "nodes") == record.node_count and rows(store, "dirents") == record.node_count - 1
    pending = store.read(lambda txn: [bytes(k) for k, _ in txn.cursor(db=store.db("meta"))
                                      if bytes(k).startswith(PENDING_PREFIX)])
    assert pending == []
    assert Metadata(store).resolve(record.root, "d2/fifo-2999").node_id == record.node_count


def test_a_parsed_toc_registers_the_same_rows_as_its_stream(tmp_path):
    """Tools and tests register a whole `TOC`; the worker a stream: one set of rows."""
    blob = fifos(2500, mode=0o600)
    dumps = []
    for source in ("toc", "stream"):
        with open_store(StoreOptions(str(tmp_path / source), map_size=64 * MiB)) as store:
            toc = BlobReader.open(BytesSource(blob)).toc if source == "toc" else open_toc(BytesSource(blob))[1]
            Layers(store).register(sha(blob), len(blob), toc, verified=True)
            dumps.append(store.read(lambda txn: [
                [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.db(db))]
                for db in ("nodes", "dirents", "file_chunks")]))
    assert dumps[0] == dumps[1] and len(dumps[0][0]) == 2500 + 4
