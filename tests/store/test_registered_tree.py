"""Random trees registered (the rows laid out by shared/store/rowcodec.c) hold what the TOC model
(shared/estargz/toc.py, all Python) resolves from the same blob: every path, its kind, size,
link target and, for a regular file, its bytes' chunks. Plain trees only: whiteouts and landmarks
take Python's way in the codec and have their own suites (tests/conformance)."""

from __future__ import annotations

import hashlib
import stat

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import TOCError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import EntryType
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import Layers
from lazylayer.shared.store.metadata import Metadata, NodeRef
from tests.format.blobkit import BlobBuilder

# names of one length under different parents, one after the other: the codec reuses the last
# parent's key when the next name's parent is the same text
_PARTS = st.sampled_from(["a", "b", "c", "é", "bb", "cc", "x y", "z" * 40])
_PATHS = st.lists(_PARTS, min_size=1, max_size=3).map("/".join)
_ITEMS = st.lists(st.tuples(_PATHS, st.sampled_from(["dir", "file", "empty", "symlink", "hardlink"]),
                            st.binary(min_size=1, max_size=300)), min_size=1, max_size=40)


def _build(items) -> bytes:
    builder = BlobBuilder()
    files: list[str] = []
    for path, kind, data in items:
        if kind == "dir":
            builder.add_dir(path)
        elif kind in ("file", "empty"):
            builder.add_file(path, data if kind == "file" else b"", chunk_size=100)
            files.append(path)
        elif kind == "symlink":
            builder.add(name=path, type="symlink", linkName="../" + path)
        elif files:
            builder.add(name=path, type="hardlink", linkName=files[0])
    return builder.build()


def _walk(meta: Metadata, ref: NodeRef, prefix: str, out: dict) -> None:
    for name, child in meta.readdir(ref):
        path = prefix + name.decode("utf-8", "surrogateescape")
        attr = meta.getattr(child)
        out[path] = (stat.S_IFMT(attr.mode), attr.size, attr.link_target,
                     [(c.chunk_offset, c.size, c.digest) for c in meta.all_chunks(child)])
        if attr.is_dir:
            _walk(meta, child, path + "/", out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ITEMS)
def test_a_registered_tree_is_the_toc_model_s(tmp_path_factory, items):
    try:
        blob = _build(items)
        toc = BlobReader.open(BytesSource(blob)).toc
    except TOCError:  # a tree the format refuses (a file under a file, ...): nothing to compare
        return
    expected = {}
    for entry in toc.nodes():
        if not entry.name:
            continue
        target = toc.hardlink_target(entry.name) or entry.name
        node = toc.entry(target)
        size = {EntryType.REG: node.size, EntryType.SYMLINK: len(node.link_name.encode())}.get(node.type, 0)
        expected[entry.name] = (_TYPE[node.type], size, node.link_name if node.type is EntryType.SYMLINK else "",
                                [(c.chunk_offset, c.size, c.digest) for c in toc.chunks(target)])
    with open_store(StoreOptions(str(tmp_path_factory.mktemp("cache")), map_size=64 << 20)) as store:
        record = Layers(store).register("sha256:" + hashlib.sha256(blob).hexdigest(), len(blob), toc, verified=True)
        found: dict = {}
        _walk(Metadata(store), record.root, "", found)
    assert found == expected


_TYPE = {EntryType.DIR: stat.S_IFDIR, EntryType.REG: stat.S_IFREG, EntryType.SYMLINK: stat.S_IFLNK}
