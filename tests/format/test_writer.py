"""The writer's format details, checked against the reference, upstream's fixtures, GNU tar and
our reader: member layout, TOC field conventions, ordering, duplicates, parallel output, and
clear errors for bad input."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile

import pytest

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import ConfigError, FormatError, NotFoundError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import EntryType
from lazylayer.shared.estargz.writer import WriterOptions, convert_dir, convert_tar
from tests.conftest import FIXTURE_TAGS, fixture_facts
from tests.format.writer_support import member_starts, unpack


def make_tar(*entries: tuple, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """entries: (name, type, data_or_link, extra attrs dict)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, value, *extra in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mtime = kind, 1_700_000_000
            for key, attr in (extra[0] if extra else {}).items():
                setattr(info, key, attr)
            if kind == tarfile.REGTYPE:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
            else:
                info.linkname = value or ""
                tar.addfile(info)
    return buf.getvalue()


def convert(raw: bytes, **options) -> tuple[bytes, object]:
    out = io.BytesIO()
    result = convert_tar(io.BytesIO(raw), out, WriterOptions(workers=1, **options))
    return out.getvalue(), result


def toc_names(toc: dict) -> list[str]:
    return [e["name"] for e in toc["entries"] if e["type"] != "chunk"]


# --------------------------------------------------------------------------------------------
# Upstream fixtures: re-stargzify them and compare with what ctr-remote wrote


def _resolved_view(reader: BlobReader) -> dict[str, dict]:
    view = {}
    for entry in reader.toc.nodes():
        if not entry.name or entry.name.endswith("landmark"):
            continue
        target = reader.toc.hardlink_target(entry.name)
        node = reader.toc.entry(target) if target else entry
        item = {"type": node.type.value, "mode": entry.mode, "uid": entry.uid, "gid": entry.gid,
                "mtime": entry.mtime,
                "xattrs": {k: base64.b64encode(v).decode() for k, v in entry.xattrs.items()}}
        if node.type is EntryType.REG:
            item["size"] = node.size
            item["sha256"] = hashlib.sha256(reader.read_file(entry.name)).hexdigest()
        if target:
            item["hardlink_to"] = target
        if node.type is EntryType.SYMLINK:
            item["link_target"] = node.link_name
            item["size"] = len(node.link_name.encode())
        if node.type in (EntryType.CHAR, EntryType.BLOCK):
            item["devmajor"], item["devminor"] = node.dev_major, node.dev_minor
        view[entry.name] = item
    return view


def _expected_view(expected_paths: dict[str, dict]) -> dict[str, dict]:
    keys = ("type", "mode", "uid", "gid", "mtime", "xattrs", "size", "sha256", "hardlink_to",
            "link_target", "devmajor", "devminor")
    return {path: {k: p[k] for k in keys if k in p} for path, p in expected_paths.items()}


@pytest.mark.parametrize("tag", FIXTURE_TAGS)
def test_restargzify_upstream_fixture(fixtures_dir, expected_paths, tag):
    """Every upstream blob (eStargz with its TOC and landmark inside the tar, and zstd:chunked)
    converts to a blob that reads back exactly as features-expected.json says."""
    facts = fixture_facts(fixtures_dir, tag)
    with open(fixtures_dir / facts["blob"], "rb") as src:
        out = io.BytesIO()
        result = convert_tar(src, out, WriterOptions(chunk_size=facts["toc"]["chunk_size"], workers=1))
    blob = out.getvalue()
    reader = BlobReader.open(BytesSource(blob), toc_digest=result.toc_digest)
    reader.verify_all()
    assert _resolved_view(reader) == _expected_view(expected_paths)
    names = toc_names(unpack(blob).toc)
    assert names.count(".no.prefetch.landmark") == 1 and names[0] == ".no.prefetch.landmark"
    assert ".prefetch.landmark" not in names and "stargz.index.json" not in names


def _upstream_toc(fixtures_dir, tag: str) -> dict:
    blob = (fixtures_dir / fixture_facts(fixtures_dir, tag)["blob"]).read_bytes()
    offset = int(blob[-51 + 16:-51 + 32], 16)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob[offset:])), mode="r:") as tar:
        return json.loads(tar.extractfile("stargz.index.json").read())


@pytest.mark.parametrize("tag,prefetch", [
    ("esgz", ()), ("esgz-c64k", ()),
    ("esgz-prefetch", ("bin/tool", "links/beta.txt", "data/access.log")),
])
def test_toc_matches_upstream_field_for_field(fixtures_dir, tag, prefetch):
    """Converting upstream's source content with upstream's options gives upstream's TOC, entry
    for entry and field for field, except the blob offsets (our gzip bytes differ)."""
    facts = fixture_facts(fixtures_dir, tag)
    with open(fixtures_dir / "features-esgz.blob", "rb") as src:
        out = io.BytesIO()
        convert_tar(src, out, WriterOptions(chunk_size=facts["toc"]["chunk_size"],
                                            prefetch=prefetch, workers=1))
    ours = unpack(out.getvalue()).toc["entries"]
    theirs = _upstream_toc(fixtures_dir, tag)["entries"]
    assert [e["name"] for e in ours if e["type"] != "chunk"] == facts["entry_order"]
    strip = lambda e: {k: v for k, v in e.items() if k != "offset"}  # noqa: E731
    assert [strip(e) for e in ours] == [strip(e) for e in theirs]
    assert [("offset" in e) for e in ours] == [("offset" in e) for e in theirs]


def test_upstream_blobs_follow_the_layout_our_checker_enforces(fixtures_dir):
    """Sanity of the independent checker: upstream's member starts are 0, payloads, TOC, footer,
    plus one start per extra parallel part (GOMAXPROCS=2), which holds only tar headers."""
    blob = (fixtures_dir / "features-esgz.blob").read_bytes()
    toc = _upstream_toc(fixtures_dir, "esgz")
    starts = set(member_starts(blob))
    offsets = {e["offset"] for e in toc["entries"] if e.get("offset")}
    toc_offset = int(blob[-51 + 16:-51 + 32], 16)
    assert offsets | {0, toc_offset, len(blob) - 51} <= starts
    assert len(starts - offsets - {0, toc_offset, len(blob) - 51}) <= 1


# --------------------------------------------------------------------------------------------
# Layout and TOC conventions


def test_chunk_fields_follow_upstream_rules():
    chunk = 100
    sizes = {"empty": 0, "one": 1, "exact": chunk, "two": 2 * chunk, "two-plus": 2 * chunk + 1}
    raw = make_tar(*((n, tarfile.REGTYPE, os.urandom(s)) for n, s in sizes.items()))
    blob, result = convert(raw, chunk_size=chunk)
    toc = unpack(blob).toc["entries"]
    keys = lambda name: [(e["type"], e.get("chunkOffset", 0), e.get("chunkSize", 0))  # noqa: E731
                         for e in toc if e["name"] == name]
    assert keys("empty") == [("reg", 0, 0)]
    assert keys("one") == [("reg", 0, 0)]
    assert keys("exact") == [("reg", 0, chunk)]  # full-size chunk states its size
    assert keys("two") == [("reg", 0, chunk), ("chunk", chunk, chunk)]
    assert keys("two-plus") == [("reg", 0, chunk), ("chunk", chunk, chunk), ("chunk", 2 * chunk, 0)]
    empty = next(e for e in toc if e["name"] == "empty")
    assert set(empty) == {"name", "type", "modtime", "mode", "digest"}
    assert empty["digest"] == "sha256:" + hashlib.sha256(b"").hexdigest()
    one = next(e for e in toc if e["name"] == "one")
    assert one["digest"] == one["chunkDigest"] and one["offset"] > 0
    landmark = toc[0]
    assert set(landmark) == {"name", "type", "size", "offset", "digest", "chunkDigest"}
    assert result.entries == len(toc) and result.chunk_entries == 3


def test_user_and_group_names_appear_once_per_id():
    attrs = lambda uid, uname: {"uid": uid, "gid": uid, "uname": uname, "gname": "g" + uname}  # noqa: E731
    raw = make_tar(("a", tarfile.REGTYPE, b"", attrs(1, "bob")), ("b", tarfile.REGTYPE, b"", attrs(1, "bob")),
                   ("c", tarfile.REGTYPE, b"", attrs(2, "eve")), ("d", tarfile.REGTYPE, b"", attrs(1, "rob")))
    toc = unpack(convert(raw)[0]).toc["entries"][1:]
    assert [(e.get("userName"), e.get("groupName")) for e in toc] == [
        ("bob", "gbob"), (None, None), ("eve", "geve"), ("rob", "grob")]


def test_blob_is_a_tar_that_gnu_tar_reads(tmp_path):
    raw = make_tar(("dir/", tarfile.DIRTYPE, None), ("dir/f", tarfile.REGTYPE, b"x" * 5000),
                   ("dir/l", tarfile.SYMTYPE, "f"), ("h", tarfile.LNKTYPE, "dir/f"),
                   ("é" * 120, tarfile.REGTYPE, b"long name"))
    blob, _ = convert(raw, chunk_size=1000)
    path = tmp_path / "blob.gz"
    path.write_bytes(blob)
    listing = subprocess.run(["tar", "-tzf", str(path)], check=True, capture_output=True, text=True)
    assert listing.stdout.splitlines() == [
        ".no.prefetch.landmark", "dir/", "dir/f", "dir/l", "h", "é" * 120, "stargz.index.json"]
    target = tmp_path / "x"
    target.mkdir()
    subprocess.run(["tar", "-xzf", str(path), "-C", str(target)], check=True)
    assert (target / "dir/f").read_bytes() == b"x" * 5000 and os.readlink(target / "dir/l") == "f"
    assert os.stat(target / "h").st_ino == os.stat(target / "dir/f").st_ino


def test_result_describes_the_blob():
    blob, result = convert(make_tar(("f", tarfile.REGTYPE, b"data" * 1000)))
    raw = gzip.decompress(blob)
    assert result.blob_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.blob_size == len(blob)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.uncompressed_size == len(raw)
    assert result.toc_offset == unpack(blob).toc_offset
    assert result.annotations() == {
        "containerd.io/snapshot/stargz/toc.digest": result.toc_digest,
        "io.containers.estargz.uncompressed-size": str(len(raw))}
    assert json.loads(json.dumps(result.to_dict()))["toc_digest"] == result.toc_digest


# --------------------------------------------------------------------------------------------
# Ordering, duplicates, hardlinks


def test_prefetch_moves_files_with_parents_and_link_targets():
    raw = make_tar(("./", tarfile.DIRTYPE, None), ("a/", tarfile.DIRTYPE, None),
                   ("a/x", tarfile.REGTYPE, b"x"), ("b/", tarfile.DIRTYPE, None),
                   ("b/t", tarfile.REGTYPE, b"t"), ("c/", tarfile.DIRTYPE, None),
                   ("c/link", tarfile.LNKTYPE, "b/t"), ("z", tarfile.REGTYPE, b"z"))
    blob, result = convert(raw, prefetch=("c/link", "/z"))
    toc = unpack(blob).toc
    assert toc_names(toc) == ["./", "c/", "b/", "b/t", "c/link", "z", ".prefetch.landmark",
                              "a/", "a/x"]
    landmark = next(e for e in toc["entries"] if e["name"] == ".prefetch.landmark")
    assert result.prefetch_size == landmark["offset"]
    assert BlobReader.open(BytesSource(blob)).prefetch_size() == landmark["offset"]


def test_prefetch_of_a_missing_path_is_a_clear_error():
    with pytest.raises(NotFoundError, match="prefetch path 'nope' is not in the input"):
        convert(make_tar(("a", tarfile.REGTYPE, b"a")), prefetch=("nope",))


def test_duplicates_later_one_wins_at_its_position():
    raw = make_tar(("a", tarfile.REGTYPE, b"old"), ("b", tarfile.REGTYPE, b"b"),
                   ("./a", tarfile.REGTYPE, b"new"))
    blob, _ = convert(raw)
    assert toc_names(unpack(blob).toc) == [".no.prefetch.landmark", "b", "a"]
    assert BlobReader.open(BytesSource(blob)).read_file("a") == b"new"


def test_links_to_a_replaced_file_keep_the_old_content():
    """As tar extraction leaves it: l1 and l2 share the first 'a', m the second."""
    raw = make_tar(("a", tarfile.REGTYPE, b"first"), ("l1", tarfile.LNKTYPE, "a"),
                   ("l2", tarfile.LNKTYPE, "l1"), ("a", tarfile.REGTYPE, b"second"),
                   ("m", tarfile.LNKTYPE, "a"))
    blob, _ = convert(raw)
    reader = BlobReader.open(BytesSource(blob))
    assert [reader.read_file(p) for p in ("l1", "l2", "a", "m")] == [b"first", b"first", b"second", b"second"]
    assert reader.toc.entry("l1").type is EntryType.REG
    assert (reader.toc.hardlink_target("l2"), reader.toc.hardlink_target("m")) == ("l1", "a")


# --------------------------------------------------------------------------------------------
# Parallel compression


def test_parallel_output_is_identical_to_serial(tmp_path):
    for number in range(6):
        (tmp_path / f"f{number}").write_bytes(os.urandom(50_000) + bytes(30_000 * number))
    (tmp_path / "small").write_text("hello")

    class Count:
        total = 0

        def advance(self, amount: int) -> None:
            self.total += amount

    blobs, totals = [], []
    for workers in (1, 2):
        out, count = io.BytesIO(), Count()
        result = convert_dir(tmp_path, out, WriterOptions(chunk_size=40_000, workers=workers,
                                                          part_size=100_000), count)
        blobs.append(out.getvalue())
        totals.append(count.total)
        unpack(out.getvalue())
        BlobReader.open(BytesSource(out.getvalue()), toc_digest=result.toc_digest).verify_all()
    assert blobs[0] == blobs[1]
    assert totals[0] == totals[1] > 6 * 50_000


def test_directory_conversion_is_deterministic_and_skips_sockets(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"f")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "sock"))
    try:
        first, second = io.BytesIO(), io.BytesIO()
        convert_dir(tree, first, WriterOptions(workers=1))
        convert_dir(tree, second, WriterOptions(workers=1))
    finally:
        sock.close()
    assert first.getvalue() == second.getvalue()
    assert toc_names(unpack(first.getvalue()).toc) == [".no.prefetch.landmark", "d/", "d/f"]


# --------------------------------------------------------------------------------------------
# Bad input


def _pax_mtime_tar(mtime: int) -> bytes:
    return make_tar(("f", tarfile.REGTYPE, b"", {"mtime": mtime}))


@pytest.mark.parametrize("raw,message", [
    (b"this is not a tar archive at all" * 40, "not a readable tar stream"),
    (gzip.compress(make_tar(("f", tarfile.REGTYPE, b"x" * 10000)))[:-4], "not a readable tar stream"),
    (gzip.compress(make_tar(("f", tarfile.REGTYPE, os.urandom(5000))))[:3000], "not a readable tar stream"),
    (make_tar(("f", tarfile.REGTYPE, os.urandom(5000)))[:2048], "unexpected end of data"),
    (make_tar(("l", tarfile.LNKTYPE, "missing")), "hardlink to 'missing', which is not an earlier entry"),
    (make_tar(("../evil", tarfile.REGTYPE, b"x")), "escapes the layer root"),
    (make_tar(("d/", tarfile.DIRTYPE, None), ("l", tarfile.LNKTYPE, "d")), "hardlink to a directory"),
    (_pax_mtime_tar(253402300800), "outside what the TOC's RFC 3339 modtime can state"),
])
def test_bad_tar_input_is_a_format_error(raw, message):
    with pytest.raises(FormatError, match=message):
        convert(raw)


def test_non_utf8_names_are_refused_with_strict_names(tmp_path):
    (tmp_path / os.fsdecode(b"bad\xff")).write_bytes(b"x")
    with pytest.raises(FormatError, match="not UTF-8"):
        convert_dir(tmp_path, io.BytesIO(), WriterOptions(strict_names=True))


def test_missing_directory_and_bad_options():
    with pytest.raises(NotFoundError):
        convert_dir("/nonexistent/tree", io.BytesIO())
    for bad in ({"chunk_size": 0}, {"compression_level": 10}, {"workers": 0}):
        with pytest.raises(ConfigError):
            WriterOptions(**bad)


@pytest.mark.parametrize("workers", [1, 2])
def test_file_shrinking_during_conversion_is_a_clear_error(tmp_path, monkeypatch, workers):
    """A source file cut short after the walk (a real race, injected here at its moment) fails
    the conversion with the file's name, in worker processes as in-process."""
    from lazylayer.shared.estargz import writer

    for number in range(4):
        (tmp_path / f"f{number}").write_bytes(os.urandom(100_000))
    real_read_dir = writer.read_dir

    def read_then_truncate(path):
        entries = real_read_dir(path)
        os.truncate(tmp_path / "f2", 10)
        return entries

    monkeypatch.setattr(writer, "read_dir", read_then_truncate)
    with pytest.raises(FormatError, match="f2: ended .* early"):
        convert_dir(tmp_path, io.BytesIO(), WriterOptions(workers=workers, part_size=50_000))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_input_tar_dialect(fmt):
    """ustar (prefix field), GNU (././@LongLink records) and PAX inputs all read back."""
    long_dir = "d" * 90 + "/" + "e" * 60  # fits ustar's prefix+name split
    entries = [(long_dir + "/", tarfile.DIRTYPE, None), (long_dir + "/f", tarfile.REGTYPE, b"ustar ok")]
    if fmt != tarfile.USTAR_FORMAT:
        entries += [("n" * 200, tarfile.REGTYPE, b"long"), ("s", tarfile.SYMTYPE, "t" * 300)]
    blob, _ = convert(make_tar(*entries, fmt=fmt))
    reader = BlobReader.open(BytesSource(blob))
    assert reader.read_file(long_dir + "/f") == b"ustar ok"
    if fmt != tarfile.USTAR_FORMAT:
        assert reader.read_file("n" * 200) == b"long"
        assert reader.toc.entry("s").link_name == "t" * 300
