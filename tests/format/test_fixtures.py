"""Every blob the upstream Go converter made reads back exactly as features-expected.json says."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest

from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import EntryType
from tests.conftest import FIXTURE_TAGS, fixture_facts

LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark"}


@pytest.fixture(params=FIXTURE_TAGS)
def opened(request, fixtures_dir):
    facts = fixture_facts(fixtures_dir, request.param)
    with FileSource(fixtures_dir / facts["blob"]) as source:
        yield BlobReader.open(source, toc_digest=facts["toc_digest_annotation"]), facts


def test_toc_footer_and_prefetch_facts(opened):
    reader, facts = opened
    assert reader.toc_digest == facts["toc_digest_annotation"] == facts["toc_digest_computed"]
    assert reader.footer.kind.value == facts["footer"]["kind"]
    assert reader.footer.toc_offset == facts["toc"]["offset"]
    assert reader.toc.json_size == facts["toc"]["json_size"]
    assert reader.toc.version == facts["toc"]["version"]
    assert len(reader.toc.entries) == facts["toc"]["entries"]
    assert sum(e.type is EntryType.CHUNK for e in reader.toc.entries) == facts["toc"]["chunk_entries"]
    assert reader.prefetch_size() == facts["prefetch"]["compressed_bytes"]
    assert reader.toc.prefetch_landmark_offset == facts["landmarks"]["prefetch_landmark_offset"]
    assert reader.toc.has_no_prefetch_landmark == facts["landmarks"]["no_prefetch_landmark"]
    for name, info in facts["files"].items():
        chunks = reader.toc.chunks(name)
        assert (chunks[0].blob_offset, len(chunks)) == (info["offset"], info["chunks"]), name


def test_every_path_matches_expected(opened, expected_paths):
    reader, _ = opened
    toc = reader.toc
    listed = {e.name for e in toc.nodes()} - {""} - LANDMARKS
    assert listed == set(expected_paths)
    for path, want in expected_paths.items():
        entry = toc.entry(path)
        assert entry is not None
        target = toc.hardlink_target(path)
        assert target == want.get("hardlink_to"), path
        kind = "reg" if entry.type is EntryType.HARDLINK else entry.type.value
        assert kind == want["type"], path
        got = (entry.mode, entry.uid, entry.gid, entry.mtime)
        assert got == (want["mode"], want["uid"], want["gid"], want["mtime"]), path
        assert {k: base64.b64encode(v).decode() for k, v in entry.xattrs.items()} == want["xattrs"]
        if want["type"] == "symlink":
            assert entry.link_name == want["link_target"]
            assert len(entry.link_name.encode()) == want["size"]
        if want["type"] in ("char", "block"):
            assert (entry.dev_major, entry.dev_minor) == (want["devmajor"], want["devminor"])
        if want["type"] == "reg":
            data = reader.read_file(path)
            assert len(data) == want["size"] and hashlib.sha256(data).hexdigest() == want["sha256"]
            names = sorted(p for p in expected_paths if (toc.hardlink_target(p) or p) == (target or path))
            assert names == sorted(want.get("hardlinks", [path])), path
            if "nlink" in want:  # markers carry raw tar facts only
                assert len(names) == want["nlink"], path


def test_random_ranges_cross_chunk_boundaries(opened, expected_paths):
    reader, _ = opened
    rng = random.Random(20240501)
    for path, want in expected_paths.items():
        if want["type"] != "reg" or not want["size"]:
            continue
        whole = reader.read_file(path)
        assert hashlib.sha256(whole).hexdigest() == want["sha256"]
        size = len(whole)
        ranges = [(rng.randrange(size), rng.randrange(1, size + 10)) for _ in range(8)]
        for chunk in reader.toc.chunks(path)[1:]:  # straddle every boundary
            ranges.append((max(0, chunk.chunk_offset - rng.randrange(1, 5000)), rng.randrange(2, 10000)))
        ranges += [(size - 1, 100), (size, 10), (size + 5, 10), (0, 0)]
        for offset, length in ranges:
            assert reader.read(path, offset, length) == whole[offset : offset + length], (path, offset, length)


def test_random_file_matches_its_recipe(opened):
    """The 5 MiB file is block i = sha256("lazylayer-features-v1/" + str(i)) repeated."""
    reader, _ = opened
    rng = random.Random(7)
    for _ in range(20):
        offset = rng.randrange(5 << 20)
        first = offset // 32
        expect = b"".join(hashlib.sha256(f"lazylayer-features-v1/{i}".encode()).digest()
                          for i in range(first, first + 40))
        got = reader.read("data/random-5MiB.bin", offset, 1000)
        assert got == expect[offset - first * 32 :][: len(got)]
        assert len(got) == min(1000, (5 << 20) - offset)


def test_verify_all_checks_every_chunk(opened):
    reader, facts = opened
    seen: list[int] = []
    summary = reader.verify_all(seen.append)
    regular = [e for e in reader.toc.nodes() if e.type is EntryType.REG]
    assert summary.files == len(regular)
    assert summary.chunks == len(seen) == sum(len(reader.toc.chunks(e.name)) for e in regular)
    assert summary.bytes == sum(seen) == sum(e.size for e in regular)
