"""Round trips: random layers -> convert -> read back every path through BlobReader and through
an independent gzip+tarfile unpacking, and compare every attribute, xattr and byte.

Layers are generated as tar streams (every tar feature: PAX long names and link targets, UTF-8,
big ids, mtimes before 1970 and far ahead, setuid/setgid/sticky, devices, fifos, hardlinks,
duplicates, whiteout markers, binary xattrs) and as real directories.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import PREFETCH_LANDMARK, EntryType
from lazylayer.shared.estargz.writer import WriterOptions, convert_dir, convert_tar
from tests.format.writer_support import norm, unpack

CHUNK = 64
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DIRS = ["", "d", "d/e", "ünï/日本", "x" * 60 + "/" + "y" * 60]
LEAVES = ["a", "b", "c.txt", "ü", "🚀", ".wh.a", ".wh..wh..opq", "sp ace", "z" * 90]
#: uname/gname are a function of the id: the TOC names an id once and readers repeat that name.
NAMES = ["", "root", "bob", "dæmon"]
MIN_MTIME, MAX_MTIME = -30610224000, 253402300799  # 1000-01-01 .. 9999-12-31T23:59:59Z


@dataclass
class Spec:
    """One tar entry to generate."""

    name: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes = b""
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def uname(self) -> str:
        return NAMES[self.uid % len(NAMES)]

    @property
    def gname(self) -> str:
        return NAMES[(self.gid + 1) % len(NAMES)]


ids = st.one_of(st.sampled_from([0, 1, 1000]), st.integers(0, 2**32 - 1))
attrs = st.fixed_dictionaries({
    "mode": st.integers(0, 0o7777),
    "uid": ids, "gid": ids,
    "mtime": st.one_of(st.sampled_from([0, 1, -1, MIN_MTIME, MAX_MTIME, 2**33]),
                       st.integers(MIN_MTIME, MAX_MTIME)),
    "xattrs": st.dictionaries(st.sampled_from(["user.a", "user.b", "trusted.overlay.opaque",
                                               "security.capability"]),
                              st.binary(max_size=20), max_size=2),
})


@st.composite
def layers(draw) -> list[Spec]:
    specs = [Spec(name=d, kind="dir", **draw(attrs)) for d in DIRS[1:] if draw(st.booleans())]
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(DIRS)) + "/" + draw(st.sampled_from(LEAVES))
        name = name.lstrip("/")
        kind = draw(st.sampled_from(["reg", "reg", "reg", "symlink", "hardlink", "char", "block", "fifo"]))
        spec = Spec(name=name, kind=kind, **draw(attrs))
        if kind == "reg":
            spec.data = draw(st.one_of(st.binary(max_size=5 * CHUNK),
                                       st.sampled_from([b"", b"\x00" * CHUNK, b"q" * 2 * CHUNK])))
        elif kind == "symlink":
            spec.link = draw(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                     min_size=1, max_size=150))
        elif kind == "hardlink":
            current = {s.name: s for s in specs}
            targets = sorted(n for n, s in current.items() if s.kind in ("reg", "hardlink"))
            if not targets:
                continue
            spec.link = draw(st.sampled_from(targets))
        elif kind in ("char", "block"):
            spec.dev = (draw(st.integers(0, 4095)), draw(st.integers(0, 1048575)))
        specs.append(spec)
    return specs


def tar_bytes(specs: list[Spec], prefix: str = "") -> bytes:
    types = {"dir": tarfile.DIRTYPE, "reg": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
             "fifo": tarfile.FIFOTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for spec in specs:
            info = tarfile.TarInfo(prefix + spec.name)
            info.type = types[spec.kind]
            info.mode, info.uid, info.gid, info.mtime = spec.mode, spec.uid, spec.gid, spec.mtime
            info.uname, info.gname = spec.uname, spec.gname
            info.linkname = (prefix + spec.link) if spec.kind == "hardlink" else spec.link
            info.devmajor, info.devminor = spec.dev
            info.size = len(spec.data)
            info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                                for k, v in spec.xattrs.items()}
            tar.addfile(info, io.BytesIO(spec.data) if spec.kind == "reg" else None)
    return buf.getvalue()


def expected_view(specs: list[Spec]) -> dict[str, tuple[Spec, bytes]]:
    """path -> (winning spec, content), with tar-extraction semantics: later entries win and a
    hardlink means the content its target had when the link was made."""
    view: dict[str, tuple[Spec, bytes]] = {}
    for spec in specs:
        data = spec.data
        if spec.kind == "hardlink":
            data = view[spec.link][1]
        view[spec.name] = (spec, data)
    return view


def check_reader(blob: bytes, view: dict[str, tuple[Spec, bytes]], toc_digest: str) -> BlobReader:
    reader = BlobReader.open(BytesSource(blob), toc_digest=toc_digest)
    reader.verify_all()
    listed = {e.name for e in reader.toc.nodes() if not reader.toc.is_implicit(e.name)}
    assert listed - {"", PREFETCH_LANDMARK, ".no.prefetch.landmark"} == set(view)
    for path, (spec, data) in view.items():
        entry = reader.toc.entry(path)
        assert entry is not None, path
        kind = entry.type.value
        target = reader.toc.hardlink_target(path)
        if kind == "hardlink":
            assert target is not None and reader.read_file(path) == data
            kind = reader.toc.entry(target).type.value
            assert spec.kind == "hardlink"
        else:
            assert kind == ("reg" if spec.kind == "hardlink" else spec.kind), path
        facts = (entry.mode, entry.uid, entry.gid, entry.uname, entry.gname, entry.mtime, entry.xattrs)
        assert facts == (spec.mode, spec.uid, spec.gid, spec.uname, spec.gname, spec.mtime, spec.xattrs), path
        if kind == "reg":
            assert reader.read_file(path) == data, path
            if data:
                middle = len(data) // 3
                assert reader.read(path, middle, CHUNK + 1) == data[middle:middle + CHUNK + 1]
        if kind == "symlink" and spec.kind == "symlink":
            assert entry.link_name == spec.link
        if kind in ("char", "block"):
            assert (entry.dev_major, entry.dev_minor) == spec.dev
    return reader


def check_tar(blob: bytes, view: dict[str, tuple[Spec, bytes]], result) -> None:
    unpacked = unpack(blob)
    assert (unpacked.toc_digest, unpacked.diff_id, unpacked.uncompressed_size) == (
        result.toc_digest, result.diff_id, result.uncompressed_size)
    by_name = unpacked.by_name()
    for path, (spec, data) in view.items():
        info, payload = by_name[path]
        assert (info.mode, info.uid, info.gid, info.uname, info.gname, int(info.mtime)) == (
            spec.mode, spec.uid, spec.gid, spec.uname, spec.gname, spec.mtime), path
        xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                  for k, v in info.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        assert xattrs == spec.xattrs
        if info.islnk():
            assert by_name[norm(info.linkname)][1] == data
        elif info.isreg():
            assert payload == data
        elif info.issym():
            assert info.linkname == spec.link
        elif info.ischr() or info.isblk():
            assert (info.devmajor, info.devminor) == spec.dev


@SETTINGS
@given(layers(), st.sampled_from(["", "./", "/"]), st.sampled_from(["tar", "gzip", "zstd"]), st.data())
def test_tar_roundtrip(specs, prefix, compression, data):
    raw = tar_bytes(specs, prefix)
    if compression == "gzip":
        raw = gzip.compress(raw, 1)
    elif compression == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    view = expected_view(specs)
    prefetch = data.draw(st.lists(st.sampled_from(sorted(view)), unique=True, max_size=3)) if view else []
    out = io.BytesIO()
    result = convert_tar(io.BytesIO(raw), out, WriterOptions(chunk_size=CHUNK, prefetch=tuple(prefetch), workers=1))
    blob = out.getvalue()
    assert (result.blob_size, result.blob_digest) == (len(blob), "sha256:" + hashlib.sha256(blob).hexdigest())
    reader = check_reader(blob, view, result.toc_digest)
    check_tar(blob, view, result)
    names = [e.name for e in reader.toc.entries if e.type is not EntryType.CHUNK]
    if prefetch:
        landmark = names.index(PREFETCH_LANDMARK)
        assert all(names.index(p) < landmark for p in prefetch)
        assert result.prefetch_size == reader.prefetch_size() > 0
        for path in prefetch:  # the prefetched bytes lie inside the prefetch range
            assert all(c.blob_offset < result.prefetch_size for c in reader.toc.chunks(path))
    else:
        assert names[0] == ".no.prefetch.landmark"


# --------------------------------------------------------------------------------------------
# Directories on disk


@st.composite
def trees(draw) -> list[Spec]:
    """Like `layers`, minus what a directory cannot express: one entry per path, hardlinks only
    to regular files, xattrs only user.* on files and directories."""
    final = {s.name: s for s in draw(layers())}
    specs = []
    for spec in final.values():
        if spec.kind == "hardlink" and final[spec.link].kind != "reg":
            continue
        if spec.kind not in ("reg", "dir"):
            spec.xattrs = {}
        spec.xattrs = {k: v for k, v in spec.xattrs.items() if k.startswith("user.")}
        specs.append(spec)
    return specs


def build_tree(root: str, specs: list[Spec]) -> None:
    dirs = {s.name: s for s in specs if s.kind == "dir"}
    for name in sorted({os.path.dirname(s.name) for s in specs} | set(dirs)):
        if name:
            os.makedirs(os.path.join(root, name), exist_ok=True)
    for spec in sorted(specs, key=lambda s: s.kind == "hardlink"):  # link targets first
        path = os.path.join(root, spec.name)
        if spec.kind == "reg":
            with open(path, "wb") as f:
                f.write(spec.data)
        elif spec.kind == "symlink":
            os.symlink(spec.link, path)
        elif spec.kind == "hardlink":
            os.link(os.path.join(root, spec.link), path)
        elif spec.kind in ("char", "block"):
            kind = stat.S_IFCHR if spec.kind == "char" else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(*spec.dev))
        elif spec.kind == "fifo":
            os.mkfifo(path)
    # Attributes last, deepest first, so creating children does not touch parents' mtimes.
    for spec in sorted(specs, key=lambda s: -s.name.count("/")):
        if spec.kind == "hardlink":
            continue
        path = os.path.join(root, spec.name)
        for key, value in spec.xattrs.items():
            os.setxattr(path, key, value, follow_symlinks=False)
        os.lchown(path, spec.uid, spec.gid)
        if spec.kind != "symlink":
            os.chmod(path, spec.mode)
        os.utime(path, ns=(spec.mtime * 10**9, spec.mtime * 10**9), follow_symlinks=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="devices and chown need root")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(trees())
def test_dir_roundtrip(tmp_path_factory, specs):
    root = str(tmp_path_factory.mktemp("tree"))
    build_tree(root, specs)
    out = io.BytesIO()
    result = convert_dir(root, out, WriterOptions(chunk_size=CHUNK, workers=1))
    blob = out.getvalue()
    reader = BlobReader.open(BytesSource(blob), toc_digest=result.toc_digest)
    unpacked = unpack(blob)
    by_name = unpacked.by_name()
    inodes: dict[tuple[int, int], set[str]] = {}
    for top, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            st_ = os.lstat(path)
            entry = reader.toc.entry(rel)
            info, payload = by_name[rel]
            assert (entry.mode, entry.uid, entry.gid, entry.mtime) == (
                stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, int(st_.st_mtime))
            assert (info.mode, info.uid, info.gid, int(info.mtime)) == (
                stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, int(st_.st_mtime))
            assert entry.xattrs == {k: os.getxattr(path, k, follow_symlinks=False)
                                    for k in os.listxattr(path, follow_symlinks=False)}
            if stat.S_ISREG(st_.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
                assert reader.read_file(rel) == content
                target = reader.toc.hardlink_target(rel)
                assert info.islnk() == (target is not None)
                if target is None:
                    assert entry.type is EntryType.REG and payload == content
                else:
                    assert norm(info.linkname) == target
                inodes.setdefault((st_.st_dev, st_.st_ino), set()).add(target or rel)
            elif stat.S_ISLNK(st_.st_mode):
                assert entry.link_name == info.linkname == os.readlink(path)
            elif stat.S_ISCHR(st_.st_mode) or stat.S_ISBLK(st_.st_mode):
                dev = (os.major(st_.st_rdev), os.minor(st_.st_rdev))
                assert (entry.dev_major, entry.dev_minor) == (info.devmajor, info.devminor) == dev
            else:
                assert entry.type.value == ("dir" if stat.S_ISDIR(st_.st_mode) else "fifo")
    assert all(len(names) == 1 for names in inodes.values()), "one inode, one stored file"
    walked = sum(len(d) + len(f) for _, d, f in os.walk(root))
    assert len(by_name) == walked + 2  # + landmark + stargz.index.json
