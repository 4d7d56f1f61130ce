"""The front is SIGKILLed (or upgraded) while 16 readers read through the layer store and a
`lazylayer mount` view; the next front takes the FUSE connection over from the holder: no read
returns wrong bytes, none fails except (EIO) one in flight at a kill, none hangs, and the mounts,
their records and the layout stay what the kernel knows."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from tests.fuse.daemonproc import LAZYLAYER, daemon_config, start_daemon, unmount_under
from tests.ops.test_daemon_ops import wait_for
from tests.support.fetchstack import PushedImage, expected_files
from tests.takeover.conftest import Stack
from tests.takeover.harness import Holder, Readers, files_of


def _readers(stack: Stack, image: PushedImage, view: Path) -> Readers:
    files = []
    merged: dict[str, bytes] = {}
    for layer in image.layers:
        expected = expected_files(layer.root)
        files += files_of(stack.front.layer_dir(image.ref, layer.digest), expected)
        merged.update(expected)
    files += files_of(view, merged)
    return Readers(files)


def test_reads_survive_three_front_kills(stack: Stack, app_image: PushedImage, tmp_path: Path):
    view = tmp_path / "view"
    done = stack.front.cli("mount", app_image.ref, str(view))
    assert done.returncode == 0, done.stderr
    readers = _readers(stack, app_image, view)
    readers.start()
    kills = []
    try:
        for round in range(1, 4):
            time.sleep(1.0)
            kills.append(time.monotonic())
            stack.front.kill()
            front = stack.restart_front()  # `lazylayer daemon` alone: it finds the holder's connection
            status = front.call("status")
            assert status["takeovers"] == round
            assert [m["target"] for m in status["mounts"]] == [str(view)]
            wait_for("the holder's views connection taken over", lambda: front.call("status")["views"]["read_only"])
        time.sleep(1.0)
    finally:
        stuck = readers.stop()
    assert not stuck, f"readers hung: {stuck}"
    readers.check(kills)
    after = [r for r in readers.reads if r.start > kills[-1] + 0.5]
    assert after and all(r.error is None for r in after)
    shown = stack.front.cli("status")
    assert shown.returncode == 0 and "takeovers: 3" in shown.stdout.splitlines()[0], shown.stdout
    done = stack.front.cli("umount", str(view))  # the mount record came through the takeovers
    assert done.returncode == 0, done.stderr


def test_upgrade_hands_over_with_no_failed_read(stack: Stack, app_image: PushedImage, tmp_path: Path):
    view = tmp_path / "view"
    assert stack.front.cli("mount", app_image.ref, str(view)).returncode == 0
    readers = _readers(stack, app_image, view)
    readers.start()
    try:
        time.sleep(1.0)
        old = stack.front
        new = stack.restart_front()  # asks the holder, which asks the old front to hand over
        assert old.process is not None and old.process.wait(timeout=30) == 0
        # (the old front may have answered start_daemon's readiness check while handing over)
        wait_for("the new front's control socket", lambda: new.call("status", timeout=5.0)["takeovers"] == 1)
        time.sleep(1.0)
    finally:
        stuck = readers.stop()
    assert not stuck, f"readers hung: {stuck}"
    readers.check([])
    assert stack.front.cli("umount", str(view)).returncode == 0


def test_a_holder_started_after_the_front_gets_the_connection(app_image: PushedImage, tmp_path: Path):
    """supervisord starts holder and front together: a front that found no holder hands its
    connection (and its journal) to one that comes later, so a crash after that is taken over."""
    run_dir = Path(tempfile.mkdtemp(prefix="ll-to-", dir="/tmp"))
    front = start_daemon(tmp_path, workers=1, run_dir=run_dir)
    holder = None
    try:
        layer = app_image.layers[0]
        tool = front.layer_dir(app_image.ref, layer.digest) / "usr/bin/tool"
        assert tool.read_bytes() == (layer.root / "usr/bin/tool").read_bytes()
        holder = Holder(front.config_path, run_dir, tmp_path / "holder.log")
        wait_for("the front to hand its connection to the holder", lambda: "has the connection" in front.log())
        front.kill()
        front = start_daemon(tmp_path, workers=1, run_dir=run_dir)
        assert front.call("status")["takeovers"] == 1
        assert tool.read_bytes() == (layer.root / "usr/bin/tool").read_bytes()
    finally:
        front.stop()
        if holder is not None:
            holder.stop()
        unmount_under(tmp_path)


def test_an_open_file_keeps_reading_across_a_takeover(stack: Stack, app_image: PushedImage):
    """The kernel sends the dead front's fh; the new front reopens its inode from it."""
    layer = app_image.layers[1]
    path = stack.front.layer_dir(app_image.ref, layer.digest) / "opt/data/blob.bin"
    want = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 0) == want[:1000]
        stack.front.kill()
        stack.restart_front()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next pread is a READ with the old fh
        assert os.pread(fd, 5000, len(want) - 5000) == want[-5000:]
    finally:
        os.close(fd)
    assert "open of inode" not in stack.front.log()


def test_takeover_flag_needs_a_holder_with_a_connection(tmp_path: Path):
    run_dir = Path(tempfile.mkdtemp(prefix="ll-to-", dir="/tmp"))
    config = daemon_config(tmp_path, run_dir)
    done = subprocess.run([*LAZYLAYER, "daemon", "--takeover", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "LAZYLAYER_CONFIG": ""})
    assert done.returncode != 0
    assert "--takeover: no FUSE connection holder with a connection runs for" in done.stderr
    assert not (tmp_path / "mnt").is_mount()


def test_a_connection_unmounted_meanwhile_is_replaced(stack: Stack, app_image: PushedImage):
    """Someone unmounted the store while no front ran: the next front mounts afresh (and the
    holder keeps the new connection) instead of serving a connection nothing reaches."""
    layer = app_image.layers[2]
    path = stack.front.layer_dir(app_image.ref, layer.digest) / "srv/two.txt"
    assert path.read_bytes() == b"22\n"
    stack.front.kill()
    subprocess.run(["umount", "-l", str(stack.front.mountpoint)], check=True)
    front = stack.restart_front()
    assert path.read_bytes() == b"22\n"
    assert "no longer mounted" in front.log()
    front.kill()
    stack.restart_front()
    assert stack.front.call("status")["takeovers"] == 2  # the new connection was the holder's
    assert path.read_bytes() == b"22\n"


def test_the_connection_id_survives_a_takeover_and_a_fresh_mount_gets_another(stack: Stack):
    """The containerd snapshotter takes `use` references again only on a new connection: a
    takeover keeps them (journal), so its id must not change; the front's pid does."""
    from lazylayer.daemon.snapshotter.remote import LayerStore

    store = LayerStore(str(stack.front.mountpoint), str(stack.run_dir), 10.0)
    try:
        before = store.front_id()
        assert before is not None and not before.startswith("?")
        stack.front.kill()
        stack.restart_front()
        assert store.front_id() == before
        stack.front.stop()
        stack.holder.stop()  # the real stop: unmounts; the next front mounts afresh
        stack.restart_front()
        after = store.front_id()
        assert after is not None and after != before
    finally:
        store.close()


def test_directories_list_across_a_takeover(stack: Stack, app_image: PushedImage):
    """The kernel stopped sending OPENDIR on this connection (daemon/dircache.py) and keeps the
    listings it read; the next front lists what it asks for by inode alone."""
    layer = app_image.layers[1]
    diff = stack.front.layer_dir(app_image.ref, layer.digest)
    listed = sorted(os.listdir(diff / "opt/data"))
    stack.front.kill()
    front = stack.restart_front()
    assert front.call("status")["dircache"]["active"]
    assert sorted(os.listdir(diff / "opt/data")) == listed  # the kernel's, or the new front's
    assert os.listdir(diff / "opt/data/deep/a/b") == ["c"]  # never listed before: the new front's
    assert diff.parent.parent.name in os.listdir(stack.front.mountpoint)
    assert "READDIR without a directory" not in stack.front.log()
