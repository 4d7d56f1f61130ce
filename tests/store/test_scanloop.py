"""The registration's entry loop in C (shared/store/scanloop.c) against the Python loop it
replaced: random TOCs, hostile ones included, registered both ways must end the same, to the
byte (every row of every database, every field of the record) or with the same refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.estargz.toc import EntryType, ModTime, TOCEntry
from lazylayer.shared.estargz.tocstream import TOCStream
from lazylayer.shared.estargz.tree import grouped
from lazylayer.shared.store import layerbuild
from lazylayer.shared.store.env import DB_NAMES, StoreOptions, open_store
from lazylayer.shared.store.layers import Layers
from tests.format.blobkit import BlobBuilder, sha


def python_scan_groups(entries, types, nodes, children, apply, starts, kinds, mtime_max, payload_end,
                       max_chunk_bytes, allow_unverified, landmark, toc_error, settle) -> tuple[int, int | None]:
    """The loop before scanloop.c, every entry settled and every group applied by Python (the
    reference)."""
    landmark_offset, bound = 0, None
    for entry, pieces in grouped(map(settle, entries)):
        kept = apply(entry, pieces)
        if entry.name == landmark:
            landmark_offset, bound = entry.offset, len(nodes)
        elif bound is not None and not isinstance(kept, TOCEntry) and kept[2] and kept[2][0][2] < landmark_offset:
            bound = len(nodes)
    return landmark_offset, bound


# mostly what real layers hold, so that most TOCs register; each hostile choice now and then
_PARTS = st.sampled_from(["a", "b", "c", "é", "x y"] * 20 + [".prefetch.landmark", ".no.prefetch.landmark", ".wh.a",
                                                             ".wh..wh..opq", "..", ".", "", "n\x00ul", "/", "ж"])
_NAMES = st.lists(_PARTS, min_size=1, max_size=3).map("/".join) | st.sampled_from(["", "./a", "/b", "a/", "a//b"])
_DIGESTS = st.sampled_from(["good"] * 100 + ["", "sha256:" + "A" * 64, "md5:0", "sha256:" + "0" * 63])
_ENTRY = st.fixed_dictionaries({
    "name": _NAMES,
    "type": st.sampled_from(["dir"] * 20 + ["reg"] * 40 + ["symlink"] * 10 + ["hardlink", "chunk", "char", "fifo"]),
    "data": st.binary(max_size=250),
    "chunk_size": st.sampled_from([None, None, 100]),
    "digest": _DIGESTS,
    "chunk_digest": _DIGESTS,
    "link": st.sampled_from(["a", "b/c", "../x"] * 10 + [""]),
    "xattrs": st.sampled_from([{}] * 8 + [{"user.k": "dg=="}, {"trusted.overlay.opaque": "eQ=="}]),
    "owner": st.sampled_from([(0, "root"), (0, ""), (7, "lp"), (7, "")]),
    "extra": st.sampled_from([{}] * 60 + [{"chunkOffset": 5}, {"chunkSize": 3}, {"offset": 1 << 40},
                                          {"innerOffset": 1 << 30}, {"mode": 0o104755}]),
})


def _digest(kind: str, data: bytes) -> str:
    return sha(data) if kind == "good" else kind


def _toc(items: list[dict[str, Any]]) -> BlobBuilder:
    builder = BlobBuilder()
    for item in items:
        uid, uname = item["owner"]
        fields = {"uid": uid, "gid": uid, "userName": uname, "groupName": uname, "xattrs": item["xattrs"]}
        kind, name, data = item["type"], item["name"], item["data"]
        if kind == "reg":
            made = builder.add_file(name, data, chunk_size=item["chunk_size"], **fields)
            made[0]["digest"] = _digest(item["digest"], data)
            if data:
                made[0]["chunkDigest"] = _digest(item["chunk_digest"], data[:item["chunk_size"] or len(data)])
            made[0].update(item["extra"])
        elif kind == "chunk":
            builder.add(name=name, type="chunk", offset=builder.member(data or b"x"), chunkOffset=len(data),
                        chunkDigest=_digest(item["chunk_digest"], data))
        elif kind in ("symlink", "hardlink"):
            builder.add(name=name, type=kind, linkName=item["link"], **fields)
        else:
            builder.add(name=name, type=kind, **{"mode": 0o755, **fields, **item["extra"]})
    return builder


def _register(tmp_path, builder: BlobBuilder, loop, monkeypatch) -> Any:
    """What registering the builder's TOC with ``loop`` as the entry loop leaves: every row and
    the record (its clock field aside), or the refusal (type and message)."""
    monkeypatch.setattr(layerbuild, "scan_groups", loop)
    json_bytes = builder.toc_json()
    digest = "sha256:" + hashlib.sha256(json_bytes).hexdigest()
    stream = TOCStream([json_bytes], payload_end=len(builder.payload))
    with open_store(StoreOptions(str(tmp_path), map_size=64 << 20)) as store:
        try:
            record = Layers(store).register(digest, len(builder.payload) + 100, stream, verified=True)
        except LazyLayerError as exc:
            return type(exc), str(exc)
        rows = store.read(lambda txn: {name: [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.db(name))]
                                       for name in DB_NAMES if name != "layers"})
    return rows, {k: v for k, v in dataclasses.asdict(record).items() if k != "registered_at"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_ENTRY, min_size=1, max_size=25))
def test_the_c_loop_registers_what_the_python_loop_did(tmp_path_factory, items):
    builder = _toc(items)
    with pytest.MonkeyPatch.context() as monkeypatch:
        in_c = _register(tmp_path_factory.mktemp("c"), builder, layerbuild.scan_groups, monkeypatch)
        in_python = _register(tmp_path_factory.mktemp("py"), builder, python_scan_groups, monkeypatch)
    assert in_c == in_python


def test_a_large_plain_layer_takes_the_c_way(tmp_path, monkeypatch):
    """Files, dirs and symlinks at new clean paths never reach Python's `_apply`; a multi-chunk
    file, an xattr and a hardlink do."""
    builder = BlobBuilder()
    builder.add_dir("d")
    for i in range(200):
        builder.add_file(f"d/f{i}", b"x" * (i + 1))
        builder.add(name=f"d/l{i}", type="symlink", linkName=f"f{i}")
    builder.add_file("d/big", b"y" * 300, chunk_size=100)
    builder.add_dir("d/x", xattrs={"user.k": "dg=="})
    builder.add(name="d/h", type="hardlink", linkName="d/f0")
    applied: list[str] = []
    original = layerbuild.LayerScan._apply

    def spy(self, entry, pieces):
        applied.append(entry.name)
        return original(self, entry, pieces)

    monkeypatch.setattr(layerbuild.LayerScan, "_apply", spy)
    rows, record = _register(tmp_path, builder, layerbuild.scan_groups, monkeypatch)
    assert sorted(applied) == ["d/big", "d/h", "d/x"]
    assert record["node_count"] == 1 + 1 + 400 + 2 and record["chunk_count"] == 200 + 3


def test_fields_are_read_alike_from_a_toc_entry_and_from_any_other_object():
    """The loop reads a TOCEntry's fields straight from their slots (entryslots.c); an object of
    another type is read the generic way, and gives the same row."""
    entry = TOCEntry(name="d/f", type=EntryType.REG, size=3, mtime=ModTime(5), mode=0o644, uid=1, gid=2)
    other = types.SimpleNamespace(**{name: getattr(entry, name) for name in TOCEntry.__struct_fields__})
    assert layerbuild.encoded_attr_of(entry) == layerbuild.encoded_attr_of(other) == \
        layerbuild.encoded_attr_of(entry)


def test_a_chunk_entry_without_its_file_is_refused_as_before(tmp_path, monkeypatch):
    builder = BlobBuilder()
    builder.add_dir("d")
    builder.add(name="d/c", type="chunk", offset=builder.member(b"x"), chunkOffset=1, chunkDigest=sha(b"x"))
    assert _register(tmp_path, builder, layerbuild.scan_groups, monkeypatch)[1] == \
        "entry 'd/c': chunk entry does not follow a regular file"

