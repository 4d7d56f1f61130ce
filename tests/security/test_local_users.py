"""A local user (nobody) gains nothing through the layer store, a `lazylayer mount` view, the cache
or the daemon's sockets; root's containers (an overlay mount, as podman and `mount --writable`
make) still run the image's setuid programs."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from lazylayer.daemon import mounts
from lazylayer.daemon.layout import encode_ref
from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.security.conftest import SECRET, SUID_ID, as_nobody, lazylayer_as_user, public_workdir


def _layer_digest(daemon: RunningDaemon, ref: str) -> str:
    return daemon.call("image", {"ref": ref})["layers"][0]["digest"]


def test_store_is_nosuid_nodev_and_root_only(daemon: RunningDaemon, suid_image: str):
    assert mounts.mount_at(daemon.mountpoint) is not None
    flags = os.statvfs(daemon.mountpoint).f_flag
    assert flags & os.ST_NOSUID and flags & os.ST_NODEV
    digest = _layer_digest(daemon, suid_image)
    layer_root = daemon.layer_root(suid_image, digest)
    for path in (daemon.mountpoint, layer_root.parent, layer_root):
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o500), path
    for name in ("info", "blob"):
        assert stat.S_IMODE(os.stat(layer_root / name).st_mode) == 0o400
    listing = as_nobody("ls", str(daemon.layer_dir(suid_image, digest)))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr


def test_device_nodes_of_an_image_open_nothing_through_the_store(daemon: RunningDaemon, suid_image: str):
    node = daemon.layer_dir(suid_image, _layer_digest(daemon, suid_image)) / "dev/zero-node"
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    with pytest.raises(PermissionError):  # nodev: not even root opens it here
        open(node, "rb").close()


def test_nobody_cannot_make_the_daemon_fetch(daemon: RunningDaemon, registry, suid_image: str):
    other = f"{registry.host}/security/suid:never-asked"
    before = {layer["ref"] for layer in daemon.call("status")["layers"]}
    for path in (daemon.mountpoint / encode_ref(other), daemon.mountpoint / encode_ref(other) / "sha256:" ):
        done = as_nobody("stat", str(path))
        assert done.returncode != 0 and "Permission denied" in done.stderr, done
    status = daemon.call("status")
    assert {layer["ref"] for layer in status["layers"]} == before
    assert not [f for f in status["failures"] if other in str(f)]


def test_a_read_only_view_runs_no_setuid_binary_and_opens_no_device(daemon: RunningDaemon, suid_image: str,
                                                                    workdir: Path):
    target = workdir / "view"
    done = daemon.cli("mount", suid_image, str(target))
    assert done.returncode == 0, done.stderr
    try:
        flags = os.statvfs(target).f_flag
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV
        ran = as_nobody(str(target / SUID_ID))
        assert ran.returncode == 0, ran.stderr
        assert "uid=65534" in ran.stdout and "euid=0" not in ran.stdout, ran.stdout
        opened = as_nobody("head", "-c", "4", str(target / "dev/zero-node"))
        assert opened.returncode != 0 and "Permission denied" in opened.stderr, opened
        secret = as_nobody("cat", str(target / "etc/secret"))
        assert secret.returncode != 0 and "Permission denied" in secret.stderr
    finally:
        assert daemon.cli("umount", str(target)).returncode == 0


def test_a_writable_mount_is_a_container_root_and_runs_setuid(daemon: RunningDaemon, suid_image: str,
                                                              workdir: Path):
    """`mount --writable` is an overlay mount of its own, like a container's root: the image's
    setuid programs work there (sudo, ping, passwd in real images), as under podman."""
    target = workdir / "rootfs"
    done = daemon.cli("mount", "--writable", suid_image, str(target))
    assert done.returncode == 0, done.stderr
    try:
        ran = as_nobody(str(target / SUID_ID))
        assert ran.returncode == 0, ran.stderr
        assert "euid=0" in ran.stdout, ran.stdout
    finally:
        assert daemon.cli("umount", str(target)).returncode == 0


def test_cache_run_dir_and_sockets_are_root_only_whatever_the_umask(suid_image: str):
    workdir = public_workdir()
    run_dir = workdir / "run"
    old = os.umask(0)
    try:
        daemon = start_daemon(workdir / "d", workers=1, run_dir=run_dir)
    finally:
        os.umask(old)
    try:
        assert daemon.cli("fetch", suid_image).returncode == 0
        data = daemon.cache_dir / "data.mdb"
        assert SECRET[:40] in data.read_bytes()  # the secret is in the cache: it must stay there
        for path, mode in ((daemon.cache_dir, 0o700), (run_dir, 0o700), (data, 0o600),
                           (run_dir / "workers.sock", 0o600), (run_dir / "control.sock", 0o600)):
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, (path, oct(os.stat(path).st_mode))
        assert as_nobody("cat", str(data)).returncode != 0
        rogue = as_nobody("python3", "-c", _CONNECT, str(run_dir / "workers.sock"))
        assert "denied" in rogue.stdout, rogue
    finally:
        daemon.stop()
        subprocess.run(["rm", "-rf", str(workdir)])


_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("connected")
except PermissionError:
    print("denied")
"""


def test_status_as_a_user_says_permission_denied(daemon: RunningDaemon):
    done = as_nobody(*lazylayer_as_user(), "status", "--run-dir", str(daemon.run_dir), timeout=20)
    assert done.returncode != 0
    assert "permission denied: the control socket" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_probe_of_a_missing_daemon_still_says_no_daemon(tmp_path: Path):
    from lazylayer.daemon.control import call
    from lazylayer.shared.errors import NotFoundError

    stale = tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale))
    listener.close()  # a socket file nobody listens on: what a SIGKILLed daemon leaves
    with pytest.raises(NotFoundError):
        call(str(tmp_path), "status", timeout=2)
