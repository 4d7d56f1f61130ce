"""Real podman (Debian's 4.3) on the layer store: a container runs an image's setuid program as a
non-root user with euid 0 (the container's own overlay decides, not the nosuid,nodev store), its
files are the image's, and removing the image releases every layer reference it took."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.ops.test_daemon_ops import wait_for
from tests.security.conftest import SUID_ID, public_workdir

PODMAN = shutil.which("podman") or "/usr/bin/podman"


class Podman:
    """podman with its own storage (graph under a temp dir) using ``store`` as an additional
    layer store, and a containers.conf fit for this sandbox: no systemd; no CAP_SYS_RESOURCE, so
    the runtime may only lower rlimits (1024 each); hybrid cgroups, which crun refuses: runc."""

    def __init__(self, root: Path, store: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        storage = root / "storage.conf"
        storage.write_text(
            '[storage]\ndriver = "overlay"\n'
            f'graphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n'
            f'[storage.options]\nadditionallayerstores = ["{store}:ref"]\n')
        containers = root / "containers.conf"
        containers.write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\nnetns = "none"\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{root / "events.log"}"\n')
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "CONTAINERS_STORAGE_CONF": str(storage), "CONTAINERS_CONF": str(containers),
                    "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"), "HOME": str(root)}
        (root / "registries.conf").write_text("")

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=self.env)

    def ok(self, *args: str, timeout: float = 180) -> str:
        done = self(*args, timeout=timeout)
        assert done.returncode == 0, f"podman {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def reset(self) -> None:
        self("rm", "-af")
        self("rmi", "-af")
        subprocess.run(["umount", "-R", "-l", str(self.root / "graph")], capture_output=True)


@pytest.fixture(scope="module")
def podman_root() -> Iterator[Path]:
    if not Path(PODMAN).exists():
        pytest.fail("podman is not installed (scripts/setup installs it)")
    root = public_workdir()
    try:
        yield root
    finally:
        subprocess.run(["umount", "-R", "-l", str(root)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def store_daemon(podman_root: Path) -> Iterator[RunningDaemon]:
    daemon = start_daemon(podman_root / "d", workers=2, config={"background": {"enabled": False}})
    try:
        yield daemon
    finally:
        daemon.stop()


def test_podman_runs_setuid_from_the_store_and_releases_the_layers(store_daemon: RunningDaemon, suid_image: str,
                                                                   podman_root: Path):
    podman = Podman(podman_root / "podman", store_daemon.mountpoint)
    try:
        pulled = podman("--log-level=debug", "pull", "--tls-verify=false", suid_image)
        assert pulled.returncode == 0, pulled.stderr
        layers = store_daemon.call("status")["layers"]
        assert layers and all(layer["ref"] == suid_image for layer in layers)
        for layer in layers:  # podman took every layer from the store: no layer blob was downloaded
            assert f"Skipping blob {layer['digest']} (already present)" in pulled.stderr, pulled.stderr[-3000:]
            assert layer["references"] == 1  # the `use` podman created; looking at diff takes none

        ran = podman.ok("run", "--rm", "--user", "65534:65534", suid_image, f"/{SUID_ID}")
        assert "uid=65534" in ran and "euid=0" in ran, ran
        plain = podman.ok("run", "--rm", suid_image, "/usr/bin/id")
        assert "uid=0(root)" in plain

        saved = podman_root / "saved.tar"
        podman.ok("save", "--format", "docker-archive", "-o", str(saved), suid_image)
        _check_saved_layers(saved, podman.ok("image", "inspect", suid_image))

        podman.ok("rmi", suid_image)
        wait_for("layer references released",
                 lambda: all(l["references"] == 0 for l in store_daemon.call("status")["layers"]), timeout=30)
    finally:
        podman.reset()


def _check_saved_layers(saved: Path, inspect_json: str) -> None:
    """`podman save` read every layer back through the store: each tar hashes to its DiffID."""
    diff_ids = json.loads(inspect_json)[0]["RootFS"]["Layers"]
    with tarfile.open(saved) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        hashes = []
        for name in manifest[0]["Layers"]:
            data = archive.extractfile(name).read()  # type: ignore[union-attr]
            hashes.append("sha256:" + hashlib.sha256(data).hexdigest())
    assert hashes == diff_ids
