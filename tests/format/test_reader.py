"""The random-access reader on hand-built blobs: read counts, chunk selection, innerOffset,
zstd and legacy footers, TOC schema quirks, duplicates, hardlinks and digest checks."""

from __future__ import annotations

import os
import shutil

import pytest

from lazylayer.shared.blobsource import BytesSource, FileSource
from lazylayer.shared.errors import DigestMismatchError, FormatError, NotFoundError, TOCError
from lazylayer.shared.estargz.footer import FooterKind
from lazylayer.shared.estargz.reader import BlobReader, decompress_chunk
from lazylayer.shared.estargz.toc import EntryType
from tests.conftest import fixture_facts
from tests.format.blobkit import BlobBuilder, sha


class CountingSource(BytesSource):
    """A BytesSource that records every read, to check how often the reader goes to storage."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read_at(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return super().read_at(offset, size)


def open_blob(blob: bytes, **kwargs) -> BlobReader:
    return BlobReader.open(BytesSource(blob), **kwargs)


def test_small_toc_comes_with_the_footer_in_one_read():
    builder = BlobBuilder()
    builder.add_file("a.txt", b"hello")
    source = CountingSource(builder.build())
    BlobReader.open(source)
    assert source.reads == [(0, source.size)]


def test_large_toc_takes_exactly_one_more_read():
    builder = BlobBuilder()
    for i in range(3000):
        builder.add(name=f"d/{os.urandom(32).hex()}-{i}", type="fifo")
    source = CountingSource(builder.build())
    reader = BlobReader.open(source)
    assert len(source.reads) == 2
    toc_read = source.reads[1]
    assert toc_read == (reader.footer.toc_offset, reader.footer.toc_size)
    assert len(reader.toc.nodes()) == 3002  # root, implicit d, the fifos


def test_reads_fetch_and_decompress_only_the_covering_chunks():
    data = os.urandom(10_000)
    builder = BlobBuilder()
    builder.add_file("big", data, chunk_size=1000)
    source = CountingSource(builder.build())
    reader = BlobReader.open(source)
    chunks = reader.toc.chunks("big")
    assert [c.chunk_offset for c in chunks] == list(range(0, 10_000, 1000))
    source.reads.clear()
    assert reader.read("big", 3500, 100) == data[3500:3600]
    assert source.reads == [(chunks[3].blob_offset, chunks[3].blob_end - chunks[3].blob_offset)]
    source.reads.clear()
    assert reader.read("big", 2999, 1002) == data[2999:4001]
    # Neighbouring chunks are fetched in one read covering chunks 2, 3 and 4.
    assert source.reads == [(chunks[2].blob_offset, chunks[4].blob_end - chunks[2].blob_offset)]
    assert reader.read("big", 9990, 100) == data[9990:]
    assert reader.read("big", 10_000) == b""
    assert reader.read_file("big") == data


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_inner_offset_packs_several_files_in_one_member(compression):
    builder = BlobBuilder(compression)
    packed = builder.add_packed([("a", b"alpha"), ("b", b"bravo!"), ("c", b"charlie")])
    builder.add_file("d", b"delta" * 100)
    reader = open_blob(builder.build())
    assert reader.footer.compression == compression
    a, b, c = (reader.toc.chunks(n)[0] for n in "abc")
    assert a.blob_offset == b.blob_offset == c.blob_offset == packed[0]["offset"]
    assert (a.inner_offset, b.inner_offset, c.inner_offset) == (0, 5, 11)
    assert a.blob_end == reader.toc.chunks("d")[0].blob_offset
    assert [reader.read_file(n) for n in "abcd"] == [b"alpha", b"bravo!", b"charlie", b"delta" * 100]
    assert reader.read("b", 2, 3) == b"avo"
    reader.verify_all()


def test_zstd_chunked_blob():
    builder = BlobBuilder("zstd")
    data = os.urandom(5000)
    builder.add_file("f", data, chunk_size=2048)
    reader = open_blob(builder.build())
    assert reader.footer.kind is FooterKind.ZSTD_CHUNKED
    assert reader.read("f", 2000, 100) == data[2000:2100]
    assert reader.read_file("f") == data


def test_legacy_stargz_footer():
    builder = BlobBuilder()
    builder.add_file("f", b"legacy bytes")
    reader = open_blob(builder.build(footer="legacy"))
    assert reader.footer.kind is FooterKind.LEGACY and reader.footer.size == 47
    assert reader.read_file("f") == b"legacy bytes"


def test_schema_quirks():
    builder = BlobBuilder()
    builder.add(name="./", type="dir", mode=0o40755)
    builder.add(name="./etc/", type="dir", mode=0o40700, uid=7, gid=8, userName="seven",
                groupName="eight", modtime="2024-05-01T12:00:00Z")
    builder.add_file("./etc/x", b"x", mode=0o104755, uid=7, gid=8,
                     xattrs={"user.k": "dmFsdWU="})
    builder.add(name="deep/er/fifo", type="fifo")
    builder.add(name="dev/null", type="char", devMajor=1, devMinor=3)
    builder.add(name="empty", type="reg", digest=sha(b""))
    reader = open_blob(builder.build())
    toc = reader.toc
    root = toc.entry("")
    assert root.type is EntryType.DIR and root.mode == 0o755 and not toc.is_implicit("")
    etc = toc.entry("etc")
    assert (etc.mode, etc.mtime, etc.uname, etc.gname) == (0o700, 1714564800, "seven", "eight")
    x = toc.entry("/etc//./x")
    assert (x.mode, x.uid, x.gid, x.mtime) == (0o4755, 7, 8, 0)
    assert (x.uname, x.gname) == ("seven", "eight")  # back-filled from the first naming
    assert x.xattrs == {"user.k": b"value"}
    assert toc.is_implicit("deep") and toc.is_implicit("deep/er") and not toc.is_implicit("deep/er/fifo")
    assert toc.entry("deep").type is EntryType.DIR
    assert (toc.entry("dev/null").dev_major, toc.entry("dev/null").dev_minor) == (1, 3)
    assert toc.chunks("empty") == [] and reader.read_file("empty") == b""
    assert [e.name for e in toc.nodes()] == ["", "etc", "etc/x", "deep", "deep/er", "deep/er/fifo",
                                              "dev", "dev/null", "empty"]


def test_chunk_sizes_derive_from_offsets_not_chunk_size():
    """chunkSize may be 0 on the last chunk ("to the end") or explicit; both read the same."""
    data = bytes(range(256)) * 12  # 3072 bytes = 3 chunks of 1024
    for explicit_last in (False, True):
        builder = BlobBuilder()
        entries = builder.add_file("f", data, chunk_size=1024)
        if not explicit_last:
            del entries[-1]["chunkSize"]
        reader = open_blob(builder.build())
        assert [c.size for c in reader.toc.chunks("f")] == [1024, 1024, 1024]
        assert reader.read_file("f") == data


def test_chunk_entries_take_their_files_name():
    builder = BlobBuilder()
    entries = builder.add_file("f", b"0123456789", chunk_size=4)
    entries[1]["name"] = "something/else"
    reader = open_blob(builder.build())
    assert [e.name for e in reader.toc.entries] == ["f", "f", "f"]
    assert reader.read_file("f") == b"0123456789"


def test_duplicates_later_wins():
    builder = BlobBuilder()
    builder.add_file("f", b"first")
    builder.add_file("f", b"second")
    builder.add_dir("d")
    builder.add_file("d/inner", b"dropped with its directory")
    builder.add_file("d", b"now a file")
    builder.add(name="e", type="symlink", linkName="x")
    builder.add_dir("e", uid=5)
    builder.add_file("e/child", b"kept")
    builder.add_dir("e", uid=6)  # dir over dir keeps the children
    reader = open_blob(builder.build())
    toc = reader.toc
    assert reader.read_file("f") == b"second"
    assert reader.read_file("d") == b"now a file"
    assert toc.entry("d/inner") is None and toc.chunks("d/inner") == []
    assert toc.entry("e").uid == 6 and reader.read_file("e/child") == b"kept"
    assert [e.name for e in toc.nodes()] == ["", "f", "d", "e", "e/child"]
    summary = reader.verify_all()
    assert (summary.files, summary.chunks) == (3, 3)


def test_hardlink_chains_resolve_to_the_final_target():
    builder = BlobBuilder()
    builder.add_file("a", b"shared")
    builder.add(name="b", type="hardlink", linkName="./a")
    builder.add(name="c", type="hardlink", linkName="b")
    reader = open_blob(builder.build())
    assert reader.toc.hardlink_target("c") == reader.toc.hardlink_target("b") == "a"
    assert reader.toc.hardlink_target("a") is None
    assert reader.toc.chunks("c") == reader.toc.chunks("a")
    assert reader.read_file("c") == b"shared"


def test_missing_and_non_regular_paths():
    builder = BlobBuilder()
    builder.add_dir("d")
    reader = open_blob(builder.build())
    with pytest.raises(NotFoundError, match="nope: no such file"):
        reader.read("nope")
    with pytest.raises(NotFoundError, match="not a regular file"):
        reader.read("d")
    assert reader.toc.entry("../etc/passwd") is None


def test_prefetch_size_from_landmarks():
    def reader_with(*landmarks: str) -> BlobReader:
        builder = BlobBuilder()
        builder.add_file("first", b"prefetched")
        for name in landmarks:
            builder.add_file(name, b"\x0f")
        builder.add_file("later", b"not prefetched")
        return open_blob(builder.build())

    with_landmark = reader_with(".prefetch.landmark")
    assert with_landmark.prefetch_size() == with_landmark.toc.chunks(".prefetch.landmark")[0].blob_offset > 0
    assert reader_with(".no.prefetch.landmark").prefetch_size() == 0
    assert reader_with().prefetch_size() is None


def test_toc_digest_is_checked_at_open():
    builder = BlobBuilder()
    builder.add_file("f", b"x")
    blob = builder.build()
    good = open_blob(blob).toc_digest
    assert good == sha(builder.toc_json())
    assert open_blob(blob, toc_digest=good).toc_digest == good
    with pytest.raises(DigestMismatchError, match="TOC: digest mismatch"):
        open_blob(blob, toc_digest=sha(b"other"))
    with pytest.raises(TOCError, match="not a sha256 digest"):
        open_blob(blob, toc_digest="md5:abc")


def test_decompress_chunk_is_the_same_check_for_fetched_ranges():
    data = os.urandom(3000)
    builder = BlobBuilder()
    builder.add_file("f", data, chunk_size=1000)
    blob = builder.build()
    reader = open_blob(blob)
    chunk = reader.toc.chunks("f")[1]
    fetched = blob[chunk.blob_offset : chunk.blob_end]
    assert decompress_chunk("gzip", fetched, chunk) == data[1000:2000]
    assert reader.read_chunk(chunk, fetched) == reader.read_chunk(chunk) == data[1000:2000]
    corrupt = bytearray(fetched)
    corrupt[-20] ^= 0xFF  # inside the stored block: inflates fine, hashes wrong
    with pytest.raises(DigestMismatchError, match=r"^f: chunk at file offset 1000: digest mismatch"):
        decompress_chunk("gzip", bytes(corrupt), chunk)


def test_chunks_without_digest_need_explicit_permission():
    builder = BlobBuilder()
    entry = builder.add_file("f", b"legacy")[0]
    del entry["chunkDigest"], entry["digest"]
    blob = builder.build()
    with pytest.raises(FormatError, match="f: chunk at file offset 0 has no digest"):
        open_blob(blob).read_file("f")
    assert open_blob(blob, allow_unverified=True).read_file("f") == b"legacy"


def test_verify_all_checks_the_whole_file_digest_too():
    builder = BlobBuilder()
    builder.add_file("ok", b"fine")
    builder.add_file("f", b"abcdefgh", chunk_size=4)[0]["digest"] = sha(b"something else")
    reader = open_blob(builder.build())
    assert reader.read_file("f") == b"abcdefgh"  # every chunk is right...
    with pytest.raises(DigestMismatchError, match="^f: whole file: digest mismatch"):
        reader.verify_all()  # ...but the file as a whole is not what the TOC says


def test_corrupted_fixture_chunk_is_named(fixtures_dir, tmp_path):
    facts = fixture_facts(fixtures_dir, "esgz")
    path = tmp_path / "corrupt.blob"
    shutil.copy(fixtures_dir / facts["blob"], path)
    with FileSource(path) as source:
        second = BlobReader.open(source).toc.chunks("data/random-5MiB.bin")[1]
    with open(path, "r+b") as blob:  # random data deflates to stored blocks: flip a payload byte
        blob.seek(second.blob_offset + 1000)
        byte = blob.read(1)
        blob.seek(second.blob_offset + 1000)
        blob.write(bytes([byte[0] ^ 0x01]))
    with FileSource(path) as source:
        reader = BlobReader.open(source, toc_digest=facts["toc_digest_annotation"])
        assert len(reader.read("data/random-5MiB.bin", 0, 100)) == 100  # chunk 1 is intact
        with pytest.raises(DigestMismatchError, match="^data/random-5MiB.bin: chunk at file offset 4194304"):
            reader.read("data/random-5MiB.bin", 4194304 + 5, 10)
        with pytest.raises(DigestMismatchError, match="data/random-5MiB.bin"):
            reader.verify_all()


@pytest.mark.parametrize("mtime", [1, -1000, 1_700_000_000, -62_101_036_800])
def test_modtime_round_trips_rfc3339_with_four_digit_years(mtime):
    from lazylayer.shared.estargz.toc import format_modtime, parse_modtime

    text = format_modtime(mtime)
    assert text is not None and len(text.split("-", 1)[0]) == 4
    assert parse_modtime(text, "f") == mtime
