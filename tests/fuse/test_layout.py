"""The layer store layout through a real mount: MNT/<base64(ref)>/<digest>/{diff,info,blob}, the state
file, read-only semantics, xattr size rules, the additional layer store's use/release."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import stat

import pytest

from tests.fuse.daemonproc import RunningDaemon
from tests.support.fetchstack import PushedImage, expected_files

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def raw_getxattr(path: str, name: str, size: int) -> tuple[int, int]:
    """getxattr(2) with a caller-sized buffer: (return value, errno)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    ret = _libc.lgetxattr(path.encode(), name.encode(), buf if size else None, ctypes.c_size_t(size))
    return ret, ctypes.get_errno() if ret < 0 else 0


def raw_listxattr(path: str, size: int) -> tuple[int, int]:
    buf = ctypes.create_string_buffer(max(size, 1))
    ret = _libc.llistxattr(path.encode(), buf if size else None, ctypes.c_size_t(size))
    return ret, ctypes.get_errno() if ret < 0 else 0


def test_every_layer_reads_back_through_diff(daemon: RunningDaemon, app_image: PushedImage):
    for layer in app_image.layers:
        diff = daemon.layer_dir(app_image.ref, layer.digest)
        for path, data in expected_files(layer.root).items():
            assert (diff / path).read_bytes() == data, path
            src = os.lstat(layer.root / path)
            got = os.lstat(diff / path)
            assert (got.st_mode, got.st_nlink, got.st_size) == (src.st_mode, src.st_nlink, src.st_size), path
            assert got.st_blocks == -(-src.st_size // 4096) * 8
        for path in layer.root.rglob("*"):
            rel = path.relative_to(layer.root)
            if path.is_symlink():
                assert os.readlink(diff / rel) == os.readlink(path)
                assert os.lstat(diff / rel).st_size == len(os.readlink(path).encode())
        assert os.stat(diff / ".lazylayer").st_mode == stat.S_IFDIR | 0o500
        assert ".lazylayer" not in os.listdir(diff)


def test_layout_files(daemon: RunningDaemon, app_image: PushedImage):
    layer = app_image.layers[0]
    root = daemon.layer_root(app_image.ref, layer.digest)
    (root / "diff").stat()
    assert sorted(os.listdir(root)) == ["blob", "diff", "info"]
    assert root.parent.name in os.listdir(daemon.mountpoint)
    assert layer.digest in os.listdir(root.parent)
    info = json.loads((root / "info").read_text())
    assert info["compressed-diff-digest"] == layer.digest and info["compressed-size"] == layer.size
    assert info["compression"] == 2 and info["diff-digest"] == layer.result.diff_id
    state_path = root / "diff" / ".lazylayer" / f"{layer.digest}.json"
    state = json.loads(state_path.read_text())
    assert state["digest"] == layer.digest and state["size"] == layer.size
    assert state["toc_digest"] == layer.toc_digest and "error" not in state
    assert os.stat(state_path).st_size == len(state_path.read_bytes())
    assert stat.S_IMODE(os.stat(state_path).st_mode) == 0o400
    # Inodes: layer nodes above 2**32, layout nodes below, all distinct.
    assert os.stat(root / "diff").st_ino > 1 << 32
    assert 1 < os.stat(root).st_ino < 1 << 32
    assert os.stat(root / "info").st_ino < 1 << 32
    st = os.statvfs(daemon.mountpoint)
    assert (st.f_bsize, st.f_blocks, st.f_files, st.f_namemax) == (4096, 0, 0, 255)


def test_blob_is_the_verified_compressed_blob(daemon: RunningDaemon, app_image: PushedImage):
    layer = app_image.layers[1]
    blob = daemon.layer_root(app_image.ref, layer.digest) / "blob"
    assert os.stat(blob).st_size == len(layer.blob)
    with open(blob, "rb") as f:
        rng = random.Random(3)
        for _ in range(20):  # random ranges first: the first read fetches and checks the whole blob
            offset = rng.randrange(len(layer.blob))
            assert os.pread(f.fileno(), 5000, offset) == layer.blob[offset:offset + 5000]
        assert f.read() == layer.blob
    kept = daemon.cache_dir / "blobs" / layer.digest.replace(":", "-")
    assert kept.read_bytes() == layer.blob
    assert [p.name for p in (daemon.cache_dir / "blobs").iterdir()] == [kept.name]  # no partial left


def test_bad_names_are_not_found(daemon: RunningDaemon, app_image: PushedImage):
    for path in ("not base64!", "bm90IGEgcmVm/sha256:nothex", "bm90IGEgcmVm/" + "x" * 10,
                 daemon.layer_root(app_image.ref, app_image.layers[0].digest).relative_to(daemon.mountpoint) / "blah"):
        with pytest.raises(FileNotFoundError):
            os.stat(daemon.mountpoint / path)
    # A well-formed layer the image does not have.
    with pytest.raises(FileNotFoundError):
        os.stat(daemon.layer_dir(app_image.ref, "sha256:" + "0" * 64))


def test_read_only(daemon: RunningDaemon, app_image: PushedImage):
    diff = daemon.layer_dir(app_image.ref, app_image.layers[0].digest)
    attempts = [
        lambda: open(diff / "etc/app.conf", "r+b"),
        lambda: open(diff / "etc/new", "wb"),
        lambda: os.mkdir(diff / "newdir"),
        lambda: os.unlink(diff / "etc/app.conf"),
        lambda: os.rename(diff / "etc/app.conf", diff / "etc/x"),
        lambda: os.symlink("x", diff / "etc/link"),
        lambda: os.chmod(diff / "etc/app.conf", 0o600),
        lambda: os.setxattr(diff / "etc/app.conf", "user.x", b"1"),
        lambda: os.truncate(diff / "etc/app.conf", 0),
        lambda: os.mkdir(daemon.mountpoint / "x"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS
    assert (diff / "etc/app.conf").read_bytes() == b"answer = 42\n"


def test_xattr_size_rules(daemon: RunningDaemon, registry):
    from tests.support.layers import build_layer, directory, file, opaque
    from tests.support.registry import Layer, push_image

    built = build_layer([directory("d/", xattrs={"user.k": "value"}), opaque("d"), file("d/f", b"x")])
    push_image(registry, "fuse/xattr", "v1", [Layer(built.blob, annotations=dict(built.result.annotations()))])
    diff = daemon.layer_dir(f"{registry.host}/fuse/xattr:v1", built.digest)
    d = str(diff / "d")
    assert os.listxattr(d) == ["trusted.overlay.opaque", "user.k"]  # config default: trusted
    assert raw_getxattr(d, "user.k", 0) == (5, 0)  # size query
    assert raw_getxattr(d, "user.k", 2) == (-1, errno.ERANGE)
    assert raw_getxattr(d, "user.k", 5) == (5, 0)
    assert raw_getxattr(d, "user.none", 10) == (-1, errno.ENODATA)
    assert raw_getxattr(d, "user.overlay.opaque", 10) == (-1, errno.ENODATA)
    names = len(b"trusted.overlay.opaque\0user.k\0")
    assert raw_listxattr(d, 0) == (names, 0)
    assert raw_listxattr(d, names - 1) == (-1, errno.ERANGE)
    assert raw_listxattr(str(diff / "d/f"), 0) == (0, 0)


def test_xattr_requests_of_a_layer_without_xattrs_are_answered_in_c(daemon: RunningDaemon, registry):
    """overlayfs asks every lower node it looks up for its xattrs: for a layer none of whose
    nodes has one, daemon/xattrless.c answers (ENODATA, the empty list) without pyfuse3. A
    layer with an xattr anywhere, or an opaque dir, still has all its nodes answered by Python."""
    from tests.support.layers import build_layer, directory, file, opaque
    from tests.support.registry import Layer, push_image

    def pushed(name: str, items: list) -> object:
        built = build_layer(items)
        push_image(registry, f"fuse/{name}", "v1", [Layer(built.blob, annotations=dict(built.result.annotations()))])
        return daemon.layer_dir(f"{registry.host}/fuse/{name}:v1", built.digest)

    def hits() -> int:
        return daemon.call("status")["dircache"]["xattr_hits"]

    plain = pushed("noxattr", [directory("d/"), file("d/f", b"x")])
    os.stat(plain / "d/f")  # resolves the layer
    before = hits()
    assert raw_getxattr(str(plain / "d/f"), "trusted.overlay.opaque", 10) == (-1, errno.ENODATA)
    assert raw_getxattr(str(plain / "d"), "user.k", 0) == (-1, errno.ENODATA)
    assert raw_listxattr(str(plain / "d/f"), 0) == (0, 0)
    assert raw_listxattr(str(plain / "d"), 100) == (0, 0)
    assert hits() == before + 4

    for name, items in (("onexattr", [directory("d/"), file("d/f", b"x", xattrs={"user.k": "v"}), file("d/g")]),
                        ("opaquedir", [directory("d/"), opaque("d"), file("d/g")])):
        layer = pushed(name, items)
        os.stat(layer / "d/g")
        before = hits()
        assert raw_getxattr(str(layer / "d/g"), "user.k", 10) == (-1, errno.ENODATA)
        assert raw_listxattr(str(layer / "d/g"), 0) == (0, 0)
        assert hits() == before, name  # Python answered
    assert os.getxattr(layer / "d", "trusted.overlay.opaque") == b"y"


def test_read_only_opens_of_layer_files_are_answered_in_c(daemon: RunningDaemon, app_image: PushedImage):
    """daemon/layeropen.c answers a read-only OPEN of a layer file (and its RELEASE): the front
    builds the read handle from the fh on the first read. Opens that could write, and the
    layout's own files, still go to Python."""
    layer = app_image.layers[0]
    diff = daemon.layer_dir(app_image.ref, layer.digest)
    files = list(expected_files(layer.root).items())[:3]
    os.stat(diff / files[0][0])  # resolves the layer

    def hits() -> int:
        return daemon.call("status")["dircache"]["open_hits"]

    before = hits()
    for path, data in files:
        with open(diff / path, "rb") as first, open(diff / path, "rb") as second:  # one fh for both
            assert first.read() == data and second.read() == data
    assert hits() == before + 2 * len(files)
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_APPEND):
        with pytest.raises(OSError) as refused:
            os.open(diff / files[0][0], flags)
        assert refused.value.errno == errno.EROFS
    info = daemon.layer_root(app_image.ref, layer.digest) / "info"
    assert json.loads(info.read_text())["compressed-diff-digest"] == layer.digest
    assert hits() == before + 2 * len(files)


def test_use_and_release(daemon: RunningDaemon, app_image: PushedImage):
    """containers' additional layer store: creating `use` takes a reference, rmdir of the layer
    dir releases one; both answer ENOENT (as upstream stargz-store)."""
    layer = app_image.layers[2]
    root = daemon.layer_root(app_image.ref, layer.digest)

    def references() -> int:
        status = daemon.call("status")
        return max(l["references"] for l in status["layers"] if l["digest"] == layer.digest)

    (root / "diff").stat()
    before = references()
    with pytest.raises(FileNotFoundError):
        open(root / "use", "w")
    assert references() == before + 1
    with pytest.raises(FileNotFoundError):
        os.rmdir(root)
    assert references() == before
