"""Layers never change, so the kernel keeps what it learnt of them: attributes, names, and names
a layer does not have (negative dentries). Checked by freezing the front (SIGSTOP): whatever
the kernel still answers while nobody serves the mount came from its cache."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tests.fuse.daemonproc import RunningDaemon
from tests.support.fetchstack import PushedImage


@contextmanager
def frozen(daemon: RunningDaemon) -> Iterator[None]:
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)


def answered_without_daemon(daemon: RunningDaemon, call: Callable[[], object], wait: float = 3.0) -> bool:
    """Whether ``call`` returns (or raises) while the front is frozen."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except OSError:
            pass
        done.set()

    with frozen(daemon):
        threading.Thread(target=run, daemon=True).start()
        answered = done.wait(wait)
    done.wait(30)  # the front is back: let a blocked call finish before the next test
    return answered


def test_absent_names_and_attributes_of_layer_nodes_are_cached(daemon: RunningDaemon, app_image: PushedImage):
    layer = app_image.layers[0]
    diff = daemon.layer_dir(app_image.ref, layer.digest)
    present = next(p for p in layer.root.rglob("*") if p.is_file())
    inside = diff / present.relative_to(layer.root)
    missing = inside.parent / "no-such-name.cpython-311.pyc"

    os.stat(inside)  # resolves the layer: the layout's directories then list more (daemon/held.py)
    os.stat(inside)  # and the kernel, told so, has asked for their attributes again
    assert not missing.exists()
    assert answered_without_daemon(daemon, lambda: os.stat(inside))
    assert answered_without_daemon(daemon, lambda: missing.exists())
    never_asked = inside.parent / "never-looked-up"
    assert not answered_without_daemon(daemon, lambda: never_asked.exists())  # the check can fail


def test_the_store_layout_is_not_cached_for_long(daemon: RunningDaemon, app_image: PushedImage):
    """`info` and the ref dirs change with what the daemon holds: the kernel must ask again."""
    info = daemon.layer_root(app_image.ref, app_image.layers[0].digest) / "info"
    info.read_bytes()
    assert not answered_without_daemon(daemon, lambda: Path(info).read_bytes())


def test_layer_directory_listings_are_cached_by_the_kernel(daemon: RunningDaemon, app_image: PushedImage):
    """daemon/dircache.py: a listing read once is the kernel's to serve again."""
    dircache = daemon.call("status")["dircache"]
    assert (dircache["active"], dircache["problem"]) == (True, None)
    diff = daemon.layer_dir(app_image.ref, app_image.layers[0].digest)
    listed, unlisted = [d for d in sorted(diff.iterdir()) if d.is_dir()][:2]
    expected = sorted(os.listdir(listed))
    fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in (listed, unlisted)]
    try:
        os.listdir(fds[0])  # fdopendir's fstat: reading a directory through FUSE had made its atime stale
        again: list[list[str]] = []
        assert answered_without_daemon(daemon, lambda: again.append(sorted(os.listdir(fds[0]))))
        assert again == [expected]
        assert not answered_without_daemon(daemon, lambda: os.listdir(fds[1]))  # the check can fail
    finally:
        for fd in fds:
            os.close(fd)


def test_store_layout_listings_follow_what_they_list(daemon: RunningDaemon, app_image: PushedImage):
    """The layout's directories change when a layer is first held; a listing the kernel keeps
    of them must not outlive that (a ref not seen before: the image by its manifest digest)."""
    ref = f"{app_image.registry.host}/{app_image.repository}@{app_image.manifest_digest}"
    digest = app_image.layers[0].digest
    ref_dir = daemon.layer_root(ref, digest).parent
    before = (os.listdir(daemon.mountpoint), os.listdir(ref_dir))
    assert ref_dir.name not in before[0] and before[1] == []
    assert sorted(os.listdir(ref_dir / digest)) == ["blob", "diff", "info"]  # listing it holds the layer
    assert ref_dir.name in os.listdir(daemon.mountpoint)
    assert os.listdir(ref_dir) == [digest]



def test_attributes_asked_again_are_answered_without_python(daemon: RunningDaemon, app_image: PushedImage):
    """Reading a directory through FUSE makes the kernel ask for its attributes again (its atime,
    on a writable mount): daemon/attrcache.c answers a layer node's GETATTR from the reply
    pyfuse3 sent before, the same attributes; the store layout's nodes always go to Python."""
    layer = app_image.layers[0]
    source = sorted(d for d in layer.root.rglob("*") if d.is_dir() and not d.is_symlink())[-1]
    directory = daemon.layer_dir(app_image.ref, layer.digest) / source.relative_to(layer.root)
    before = os.lstat(directory)
    hits = daemon.call("status")["dircache"]["attr_hits"]
    os.listdir(directory)
    after = os.lstat(directory)
    assert daemon.call("status")["dircache"]["attr_hits"] == hits + 1
    fields = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_blocks")
    assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]

    info = daemon.layer_root(app_image.ref, app_image.layers[0].digest) / "info"
    os.lstat(info)
    os.lstat(info)  # never kept by the kernel: both reach the front, neither is answered in C
    assert daemon.call("status")["dircache"]["attr_hits"] == hits + 1
