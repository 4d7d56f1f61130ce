"""Failures through a real mount: a TOC digest mismatch refuses the layer, a corrupted chunk is
EIO for the reads that need it and nothing else, the state file and `status` show the errors;
the daemon refuses a busy mountpoint or a missing /dev/fuse with one clear line; after SIGKILL a
restart on the same mountpoint works and serves what was read before from the cache."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.daemonproc import LAZYLAYER, RunningDaemon, start_daemon
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.fetchstack import ImageTree, NO_NEIGHBOURS, default_trees, push_image_trees
from tests.support.registry import RunningRegistry

#: only the reads a test makes fetch anything (no prefetch, background walk or neighbours)
QUIET = {"prefetch": {"enabled": False}, "background": {"enabled": False}, "fuse": NO_NEIGHBOURS}


@pytest.fixture(scope="module")
def quiet_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """No prefetch, no background fetch: only demand reads touch the blob."""
    running = start_daemon(tmp_path_factory.mktemp("quiet"), workers=1, config=QUIET)
    try:
        yield running
    finally:
        running.stop()


def test_toc_digest_mismatch_refuses_the_layer(quiet_daemon: RunningDaemon, registry: RunningRegistry,
                                               tmp_path: Path):
    trees = default_trees(tmp_path)
    image = push_image_trees(registry, "fuse/badtoc", "v1",
                             [trees[0], ImageTree(trees[1].root, toc_digest="sha256:" + "0" * 64)])
    bad = image.layers[1]
    with pytest.raises(OSError) as caught:
        os.stat(quiet_daemon.layer_dir(image.ref, bad.digest))
    assert caught.value.errno == errno.EIO
    assert (quiet_daemon.layer_dir(image.ref, image.layers[0].digest) / "etc/app.conf").read_bytes() == b"answer = 42\n"
    done = quiet_daemon.cli("mount", image.ref, str(tmp_path / "view"))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "digest mismatch" in done.stderr, done.stderr
    assert bad.digest in done.stderr
    status = json.loads(quiet_daemon.cli("status", "--json").stdout)
    failure = next(f for f in status["failures"] if f["digest"] == bad.digest)
    assert failure["kind"] == "digest" and "digest mismatch" in failure["error"]
    assert not any(l["digest"] == bad.digest for l in status["layers"])


def test_corrupted_chunk_is_eio_for_that_read_only(quiet_daemon: RunningDaemon, registry: RunningRegistry,
                                                   tmp_path: Path):
    root = tmp_path / "tree"
    (root / "data").mkdir(parents=True)
    payload = random.Random(7).randbytes(200_000)
    (root / "data/bad.bin").write_bytes(payload)
    (root / "data/good.txt").write_bytes(b"fine\n" * 1000)
    # Stored gzip blocks: the payload is in the blob verbatim; flip a byte of its first chunk.
    image = push_image_trees(registry, "fuse/corrupt", "v1", [ImageTree(root, level=0, corrupt=payload[100:164])])
    layer = image.layers[0]
    diff = quiet_daemon.layer_dir(image.ref, layer.digest)
    fd = os.open(diff / "data/bad.bin", os.O_RDONLY)
    try:
        for _ in range(2):  # not cached, not served: the same answer every time
            with pytest.raises(OSError) as caught:
                os.pread(fd, 4096, 0)
            assert caught.value.errno == errno.EIO
        # Other chunks of the same file, and other files, still read fine.
        assert os.pread(fd, 4096, 150_000) == payload[150_000:154_096]
    finally:
        os.close(fd)
    assert (diff / "data/good.txt").read_bytes() == b"fine\n" * 1000
    state = json.loads((diff / ".lazylayer" / f"{layer.digest}.json").read_text())
    assert "error" in state and ("digest" in state["error"] or "corrupt" in state["error"]), state
    status = json.loads(quiet_daemon.cli("status", "--json").stdout)
    entry = next(l for l in status["layers"] if l["digest"] == layer.digest)
    assert entry["error"] == state["error"]


def _start_failing(workdir: Path, **kw) -> subprocess.CompletedProcess:
    daemon = start_daemon(workdir, wait=False, **kw)
    assert daemon.process is not None
    try:
        daemon.process.wait(timeout=60)
    finally:
        daemon.stop()
    return subprocess.CompletedProcess(daemon.process.args, daemon.process.returncode, daemon.log(), "")


def test_busy_mountpoints_are_refused(quiet_daemon: RunningDaemon, tmp_path: Path):
    other = tmp_path / "tmpfs"
    (other / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other / "mnt")], check=True)
    done = _start_failing(other)  # its stop() unmounts everything under ``other``
    assert done.returncode == 1 and "is busy: tmpfs" in done.stdout, done.stdout
    # Another daemon's live mount.
    second = tmp_path / "second"
    second.mkdir()
    os.symlink(quiet_daemon.mountpoint, second / "mnt")
    done = _start_failing(second)
    assert done.returncode == 1 and "a running lazylayer daemon serves it" in done.stdout, done.stdout
    # The same run dir.
    done = _start_failing(tmp_path / "third", run_dir=quiet_daemon.run_dir)
    assert done.returncode == 1 and "another lazylayer daemon" in done.stdout, done.stdout
    assert quiet_daemon.call("status")["mountpoint"] == str(quiet_daemon.mountpoint)


def test_blob_with_wrong_bytes_is_eio_and_never_kept(quiet_daemon: RunningDaemon, registry: RunningRegistry,
                                                     tmp_path: Path):
    """The registry serves the whole blob with one byte flipped: `blob` reads fail with EIO,
    the layer is marked failed with the reason, and no (partial) blob file stays."""
    proxy = FaultProxy(registry.host)
    try:
        image = push_image_trees(registry, "fuse/badblob", "v1", default_trees(tmp_path / "trees")[2:])
        layer = image.layers[0]
        root = quiet_daemon.layer_root(image.ref_via(proxy.host), layer.digest)
        os.stat(root / "diff")
        proxy.rules.append(Rule("corrupt", times=None, ranged=False))  # whole-body GETs only
        with pytest.raises(OSError) as caught:
            (root / "blob").read_bytes()
        assert caught.value.errno == errno.EIO
        blobs = quiet_daemon.cache_dir / "blobs"
        assert not blobs.exists() or list(blobs.iterdir()) == []
        status = json.loads(quiet_daemon.cli("status", "--json").stdout)
        cached = next(c for c in status["cached_layers"] if c["digest"] == layer.digest)
        assert cached["state"] == "failed" and "blob digest mismatch" in cached["error"]
        assert "digest mismatch" in quiet_daemon.log()
    finally:
        proxy.stop()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_missing_dev_fuse_is_refused(tmp_path: Path):
    """A private mount namespace whose /dev has no fuse node (the real thing, not a mock)."""
    script = (f"mount -t tmpfs tmpfs /dev && exec {' '.join(LAZYLAYER)} daemon --mountpoint {tmp_path}/mnt "
              f"--run-dir {tmp_path}/run --cache-dir {tmp_path}/cache --workers 0")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "LAZYLAYER_CONFIG": ""})
    assert done.returncode == 1
    assert done.stderr.strip() == ("lazylayer daemon: /dev/fuse is missing: load the fuse module (modprobe fuse) "
                                   "or give the container --device /dev/fuse")


def wait_registered(daemon: RunningDaemon, digests: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not digests <= {l["digest"] for l in daemon.call("status")["cached_layers"]}:
        assert time.monotonic() < deadline, f"layers not registered within {timeout} s"
        time.sleep(0.05)


def test_restart_after_sigkill_serves_from_the_warm_cache(registry: RunningRegistry, tmp_path: Path):
    proxy = FaultProxy(registry.host)
    try:
        image = push_image_trees(registry, "fuse/restart", "v1", default_trees(tmp_path / "trees"))
        ref = image.ref_via(proxy.host)
        layer = image.layers[1]
        workdir = tmp_path / "d"
        first = start_daemon(workdir, workers=1, config=QUIET)
        try:
            data = (first.layer_dir(ref, layer.digest) / "opt/data/blob.bin").read_bytes()
            # the lookup resolves the image's other layers in the background: let them finish, or
            # the restarted daemon resolves them again (blob requests this test does not expect)
            wait_registered(first, {l.digest for l in image.layers})
            first.kill()
            with pytest.raises(OSError) as caught:
                os.statvfs(first.mountpoint)
            assert caught.value.errno == errno.ENOTCONN  # the stale mount a crash leaves
        except BaseException:
            first.stop()  # on failure only: the restart below must find the stale mount
            raise
        second = start_daemon(workdir, workers=1, config=QUIET, run_dir=first.run_dir)
        try:
            diff = second.layer_dir(ref, layer.digest)
            os.stat(diff)  # resolving may ask the registry for the manifest
            proxy.seen.clear()
            assert (diff / "opt/data/blob.bin").read_bytes() == data
            # a layer registered by another daemon is checked (a 1-byte GET) on its next resolve,
            # which the resolve-ahead of the image's layers or a re-lookup may make at any time
            assert [s for s in proxy.seen if "/blobs/" in s.path and s.range != "bytes=0-0"] == []
            (diff / "opt/exact").read_bytes()  # never read before: fetched, and the proxy sees it
            assert [s for s in proxy.seen if "/blobs/" in s.path]
        finally:
            second.stop()
            first.stop()  # its process is long dead: this removes its run dir
    finally:
        proxy.stop()
