"""`lazylayer mount/umount/status` against a real daemon, and kernel overlayfs over our layer
diffs: both show the same merged image (whiteouts, opaque dirs, replaced kinds)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from lazylayer.daemon import mounts
from tests.fuse.conftest import tree_of
from tests.fuse.daemonproc import RunningDaemon
from tests.support.layers import build_layer, directory, file, opaque, symlink, whiteout
from tests.support.registry import Layer, RunningRegistry, push_image

BASE = [
    directory("etc/"), file("etc/passwd", b"root"), file("etc/hosts", b"localhost"),
    directory("opt/"), file("opt/a", b"a"), file("opt/b", b"b"), directory("opt/sub/"), file("opt/sub/c", b"c"),
    file("gone", b"x"), directory("gone-dir/"), file("gone-dir/inner", b"i"),
    directory("becomes-file/"), file("becomes-file/x", b"x"), symlink("link", "etc/hosts"),
]
MIDDLE = [directory("etc/"), file("etc/hosts", b"mid hosts"), file("mid-only", b"m"), whiteout("gone")]
TOP = [directory("opt/"), opaque("opt"), file("opt/new", b"n"), whiteout("gone-dir"), whiteout("mid-only"),
       file("becomes-file", b"now a file"), directory("etc/"), whiteout("etc/passwd")]


@pytest.fixture(scope="module")
def stack(registry: RunningRegistry) -> str:
    layers = [build_layer(items) for items in (BASE, MIDDLE, TOP)]
    push_image(registry, "fuse/stack", "v1",
               [Layer(l.blob, annotations=dict(l.result.annotations()), diff_id=l.result.diff_id) for l in layers])
    return f"{registry.host}/fuse/stack:v1"


EXPECTED = {
    "etc": "dir", "etc/hosts": b"mid hosts", "opt": "dir", "opt/new": b"n", "becomes-file": b"now a file",
    "link": "etc/hosts",
}


def check_merged(tree: dict[str, tuple]) -> None:
    assert sorted(tree) == sorted(EXPECTED)
    for path, want in EXPECTED.items():
        kind, _, detail = tree[path]
        if want == "dir":
            assert kind == 0o040000, path
        else:
            assert detail == want, path


def test_mount_read_only_shows_the_merged_image(daemon: RunningDaemon, stack: str, tmp_path: Path):
    target = tmp_path / "view"
    done = daemon.cli("mount", stack, str(target))
    assert done.returncode == 0, done.stderr
    try:
        assert mounts.mount_at(target) is not None
        check_merged(tree_of(target))
        with pytest.raises(OSError) as caught:
            (target / "new").write_bytes(b"x")
        assert caught.value.errno == errno.EROFS
        status = json.loads(daemon.cli("status", "--json").stdout)
        assert [m["target"] for m in status["mounts"]] == [str(target)]
        assert len(status["layers"]) >= 3 and status["workers"]["workers"]
        assert "chunks" in status["cache"]
        human = daemon.cli("status")
        assert human.returncode == 0 and "layers" in human.stdout
    finally:
        done = daemon.cli("umount", str(target))
    assert done.returncode == 0, done.stderr
    assert mounts.mount_at(target) is None
    assert json.loads(daemon.cli("status", "--json").stdout)["mounts"] == []


def test_kernel_overlay_of_layer_diffs_matches_lazylayer_mount(daemon: RunningDaemon, stack: str, tmp_path: Path):
    image = daemon.call("image", {"ref": stack})
    lowers = [layer["path"] for layer in reversed(image["layers"])]
    upper, work, target = tmp_path / "upper", tmp_path / "work", tmp_path / "overlay"
    for d in (upper, work, target):
        d.mkdir()
    daemon.extra_mounts.append(target)
    mounts.overlay_mount(lowers, str(upper), str(work), str(target))
    try:
        overlay_tree = tree_of(target)
    finally:
        mounts.unmount(str(target))
    check_merged(overlay_tree)
    view = tmp_path / "view"
    assert daemon.cli("mount", stack, str(view)).returncode == 0
    try:
        assert tree_of(view) == overlay_tree
    finally:
        daemon.cli("umount", str(view))


def test_writable_mount(daemon: RunningDaemon, stack: str, tmp_path: Path):
    target = tmp_path / "rw"
    done = daemon.cli("mount", "--writable", stack, str(target))
    assert done.returncode == 0, done.stderr
    try:
        check_merged(tree_of(target))
        (target / "etc/hosts").write_bytes(b"changed")
        (target / "added").write_bytes(b"a")
        os.unlink(target / "becomes-file")
        assert (target / "etc/hosts").read_bytes() == b"changed"
        assert sorted(os.listdir(target)) == ["added", "etc", "link", "opt"]
    finally:
        done = daemon.cli("umount", str(target))
    assert done.returncode == 0, done.stderr
    # The layers themselves are untouched.
    again = tmp_path / "again"
    assert daemon.cli("mount", stack, str(again)).returncode == 0
    try:
        check_merged(tree_of(again))
    finally:
        daemon.cli("umount", str(again))


def test_mount_errors_are_one_line(daemon: RunningDaemon, registry: RunningRegistry, tmp_path: Path):
    done = daemon.cli("mount", f"{registry.host}/fuse/nothing:v1", str(tmp_path / "x"))
    assert done.returncode == 1
    assert done.stderr.startswith("lazylayer mount: ") and len(done.stderr.strip().splitlines()) == 1
    done = daemon.cli("umount", str(tmp_path / "x"))
    assert done.returncode == 1 and "not mounted" in done.stderr


def _walk(root: Path) -> list[str]:
    """What `find ROOT` does below ROOT: list every directory, lstat every entry."""
    seen = []
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lstat(os.path.join(top, name))
            seen.append(os.path.relpath(os.path.join(top, name), root))
    return sorted(seen)


def test_a_view_is_walked_again_without_asking_for_attributes(daemon: RunningDaemon, stack: str, tmp_path: Path):
    """daemon/viewconn.py: merged views live on a read-only connection of their own, whose
    kernel keeps a directory's atime after reading its listing; so a walk right after the first
    one asks for no directory's attributes again (on the store's connection it asked for every
    one: daemon/attrcache.c answered them), and the store stays writable."""
    target = tmp_path / "view"
    done = daemon.cli("mount", stack, str(target))
    assert done.returncode == 0, done.stderr
    try:
        views = daemon.call("status")["views"]
        assert views["read_only"] is True
        images = mounts.mount_at(daemon.mountpoint / ".images")
        assert images is not None and images.fstype == mounts.FUSE_TYPE
        assert {"ro", "nosuid", "nodev"} <= _mount_flags(images.mountpoint)
        assert os.statvfs(target).f_flag & os.ST_RDONLY
        assert not os.statvfs(daemon.mountpoint).f_flag & os.ST_RDONLY
        first = _walk(target)
        status = daemon.call("status")
        assert status["views"]["requests"] > views["requests"]
        again = _walk(target)
        assert again == first and "opt/new" in first
        assert daemon.call("status")["dircache"]["attr_hits"] == status["dircache"]["attr_hits"]
    finally:
        done = daemon.cli("umount", str(target))
    assert done.returncode == 0, done.stderr


def _mount_flags(mountpoint: str) -> set[str]:
    """The per-mount flags (ro, nosuid, nodev, ...) of the mount at ``mountpoint``."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == mountpoint:
                return set(fields[5].split(","))
    return set()
