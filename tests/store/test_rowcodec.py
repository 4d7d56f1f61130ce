"""The C row encoder (shared/store/rowcodec.c) writes what the readers decode: node and
file-chunk values byte for byte as msgpack packs them, keys as the structs say, and it hands every uncommon case to
its caller's Python functions. What rows a whole layer gets is the metadata suites' to check
(tests/conformance), which register through it."""

from __future__ import annotations

import struct
from array import array

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazylayer.shared.estargz.fields import DEV_MAJOR_MAX, DEV_MINOR_MAX, MTIME_MAX, UINT32_MAX
from lazylayer.shared.estargz.toc import DIR, REG, EntryType, ModTime, TOCEntry
from lazylayer.shared.store._rowcodec import encode_rows
from lazylayer.shared.store.chunks import digest_key
from lazylayer.shared.store.layerbuild import encoded_attr_of
from lazylayer.shared.store.metadata import FileChunk, attr_of

DIGEST = "sha256:" + "0123456789abcdef" * 4
LANDMARKS = (".prefetch.landmark", ".no.prefetch.landmark")


def _unexpected(*args):
    raise AssertionError(f"called back with {args}")


def encode(items, *, special=frozenset(), special_attr=_unexpected, hardlink_keys=None, parent_keys=None,
           special_dirent=_unexpected, starts=(1 << 40,), chunk_key=_unexpected, node_id=1, layer_id=7):
    return encode_rows(items, 0, len(items), node_id, layer_id, set(special), special_attr, hardlink_keys or {},
                       parent_keys or {"": struct.pack(">II", layer_id, 2)}, LANDMARKS, special_dirent,
                       array("q", starts), chunk_key)


_offsets = st.integers(0, 2**63 - 2)


@given(size=st.integers(0, 2**63 - 1), blob_offset=_offsets, inner=st.integers(0, 2**64 - 1), chunk_offset=_offsets,
       gap=st.integers(1, 2**20), digest=st.sampled_from([DIGEST, DIGEST.upper().replace("SHA256", "sha256")]))
def test_a_chunk_row_is_what_filechunk_encodes(size, blob_offset, inner, chunk_offset, gap, digest):
    end = min(blob_offset + gap, 2**63 - 1)
    node = (REG, b"attr", ((chunk_offset, size, blob_offset, inner, digest),))
    nodes, dirents, chunks, last_id, payload, count = encode([("f", node)], starts=(blob_offset, end))
    key = digest_key(bytes.fromhex(digest[7:]))
    assert chunks == [(struct.pack(">IIQ", 7, 2, chunk_offset),
                       FileChunk(chunk_offset, size, blob_offset, inner, end, digest, key).encode())]
    assert msgpack.unpackb(chunks[0][1]) == [size, blob_offset, inner, end, digest, key]
    assert nodes == [(struct.pack(">II", 7, 2), b"attr")] and last_id == 2
    assert dirents == [(struct.pack(">II", 7, 2) + b"f", struct.pack(">II", 7, 2))]
    assert (payload, count) == (size, 1)


@pytest.mark.parametrize("digest", ["", "sha512:" + "ab" * 64, "sha256:" + "zz" * 32, DIGEST + "0"])
def test_a_chunk_without_a_plain_sha256_digest_asks_for_its_key(digest):
    asked = []

    def chunk_key(d, blob_offset, inner):
        asked.append((d, blob_offset, inner))
        return b"U-key"

    node = (REG, b"a", ((0, 5, 100, 3, digest),))
    _, _, chunks, *_ = encode([("f", node)], starts=(100, 200), chunk_key=chunk_key)
    assert asked == [(digest, 100, 3)]
    assert chunks[0][1] == FileChunk(0, 5, 100, 3, 200, digest, b"U-key").encode()


def test_uncommon_nodes_and_names_are_the_callers_to_decide():
    attrs, dirents = [], []

    def special_attr(path, node):
        attrs.append(path)
        return b"fixed"

    def special_dirent(path):
        dirents.append(path)
        return None if path.endswith(("opq", "landmark")) else ("d", "shown")

    parent_keys = {"": b"\0\0\0\7\0\0\0\2", "d": b"\0\0\0\7\0\0\0\3"}
    items = [("d", (DIR, b"dir", ())), ("d/.wh..wh..opq", (REG, b"w", ())), ("d/.wh.x", (REG, b"w", ())),
             (".prefetch.landmark", (REG, b"l", ())), ("d/link", "a hardlink's entry"), ("d/\udcff", (REG, b"s", ()))]
    nodes, rows, _, last_id, _, _ = encode(items, special={"d"}, special_attr=special_attr,
                                           hardlink_keys={"d/link": b"target!!"}, parent_keys=parent_keys,
                                           special_dirent=special_dirent)
    assert attrs == ["d"] and nodes[0][1] == b"fixed" and last_id == 6
    assert dirents == ["d/.wh..wh..opq", "d/.wh.x", ".prefetch.landmark"]
    assert [key[8:] for key, _ in rows] == [b"d", b"shown", b"link", b"\xff"]
    assert rows[2][1] == b"target!!"


def test_a_payload_over_63_bits_is_an_error():
    chunks = ((0, 2**62, 0, 0, DIGEST), (2**62, 2**62, 1, 0, DIGEST))
    with pytest.raises(OverflowError):
        encode([("f", (REG, b"a", chunks))], starts=(0, 1, 2))


def test_a_chunk_past_the_payload_end_is_an_error_not_a_read_past_the_array():
    node = (REG, b"a", ((0, 5, 300, 0, DIGEST),))
    with pytest.raises(IndexError):
        encode([("f", node)], starts=(100, 200))


@pytest.mark.parametrize("items", [[("f", (REG, b"a"))], [("f", (REG, b"a", ((0, 1, 2),)))], [("f",)], ["f"]])
def test_malformed_input_is_a_type_error(items):
    with pytest.raises(TypeError):
        encode(items)


_kinds = st.sampled_from([k for k in EntryType if k not in (EntryType.HARDLINK, EntryType.CHUNK)])


@given(kind=_kinds, mode=st.integers(0, 0o7777), uid=st.integers(0, UINT32_MAX), gid=st.integers(0, UINT32_MAX),
       size=st.integers(0, 2**63 - 1), mtime=st.integers(-2 * MTIME_MAX, 2 * MTIME_MAX),
       link=st.text(st.characters(exclude_categories=("Cs",)), max_size=300),
       major=st.integers(0, DEV_MAJOR_MAX), minor=st.integers(0, DEV_MINOR_MAX),
       xattrs=st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
                              st.binary(max_size=70_000) | st.binary(max_size=40), max_size=20))
def test_a_node_row_is_what_nodeattr_encodes(kind, mode, uid, gid, size, mtime, link, major, minor, xattrs):
    entry = TOCEntry(name="n", type=kind, mode=mode, uid=uid, gid=gid, size=size, mtime=ModTime(mtime),
                     link_name=link, dev_major=major, dev_minor=minor, xattrs=xattrs)
    assert encoded_attr_of(entry) == attr_of(entry).encode()


@pytest.mark.parametrize("path", ["d/x", "d/\u00e9"])  # the ASCII way and the general one
def test_a_parent_key_that_is_not_bytes_is_a_type_error(path):
    with pytest.raises(TypeError):
        encode([(path, (REG, b"a", ()))], parent_keys={"": b"\0" * 8, "d": "not bytes"})
