"""Fixtures for the containerd tests: a registry with a runnable eStargz image and the same
image as plain gzip, the lazylayer front, `lazylayer snapshotter`, and Debian's containerd on its
own root, state, socket and config with the snapshotter as proxy plugin `lazylayer`.

Everything is real and per module; containerd, the snapshotter and the front are stopped and
every mount under the work dir is undone at teardown.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import requests

from bench.containerd import Containerd, accepts, start_containerd
from bench.lazy import wait_until
from lazylayer.shared.procs import die_with_parent, stop_process
from lazylayer.workers.registry.local import free_port
from tests.fuse.daemonproc import LAZYLAYER, RunningDaemon, start_daemon, unmount_under
from tests.support.layers import Item, binary_items, build_layer, directory, file, make_tar
from tests.support.registry import Layer, RunningRegistry, push_image, registry  # noqa: F401

NAMESPACE = "lltest"
SNAPSHOTTER = "lazylayer"
#: a file the container never reads: its chunks must never be fetched
BIG = "data/big.bin"
SMALL = "data/small.txt"
SMALL_TEXT = b"hello from a lazy layer\n"

if shutil.which("containerd") is None or shutil.which("ctr-remote") is None:
    pytest.skip("containerd / ctr-remote missing: run ./scripts/setup", allow_module_level=True)


def runtime_items() -> list[Item]:
    """A shell, cat and sleep with their libraries: enough to run and keep a container."""
    dirs = ["bin/", "usr/", "usr/bin/", "lib/", "lib64/", "lib/x86_64-linux-gnu/", "etc/", "tmp/", "proc/",
            "sys/", "dev/", "run/"]
    items = [directory(d) for d in dirs]
    for tool in ("/bin/sh", "/usr/bin/cat", "/usr/bin/sleep"):
        items += binary_items(os.path.realpath(tool))
        items.append(file(tool.lstrip("/"), Path(os.path.realpath(tool)).read_bytes(), 0o755))
    return list({item.name: item for item in items}.values())


def data_items(seed: int = 17) -> list[Item]:
    big = random.Random(seed).randbytes(3 << 20)
    return [directory("data/"), file(BIG, big), file(SMALL, SMALL_TEXT)]


@dataclass(frozen=True)
class ImageRefs:
    esgz: str
    gzip: str
    #: plain gzip too, with other data (other chain ids): for rpull's fallback
    gzip_other: str
    #: eStargz blob digest -> size, data layer last
    esgz_layers: tuple[tuple[str, int], ...]


def _push(registry: RunningRegistry, name: str, layers: list[Layer]) -> str:
    push_image(registry, name, "v1", layers)
    return f"{registry.host}/{name}:v1"


@pytest.fixture(scope="module")
def images(registry: RunningRegistry) -> ImageRefs:
    runtime = runtime_items()
    esgz = [_esgz(items) for items in (runtime, data_items())]
    return ImageRefs(_push(registry, "ctrd/esgz", esgz),
                      _push(registry, "ctrd/gzip", [_gzip(runtime), _gzip(data_items())]),
                      _push(registry, "ctrd/gzip-other", [_gzip(runtime + [file("other", b"1")]), _gzip(data_items(18))]),
                      tuple((hashlib.sha256(l.data).hexdigest(), len(l.data)) for l in esgz))


def _esgz(items: list[Item]) -> Layer:
    built = build_layer(items, chunk_size=64 << 10)
    return Layer(built.blob, annotations=dict(built.result.annotations()), diff_id=built.result.diff_id)


def _gzip(items: list[Item]) -> Layer:
    tar = make_tar(items)
    return Layer(gzip.compress(tar, mtime=0), diff_id="sha256:" + hashlib.sha256(tar).hexdigest())


@dataclass
class SnapshotterProcess:
    config_path: Path
    socket: Path
    root: Path
    process: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)
    #: environment overrides of the config (LAZYLAYER_<SECTION>_<KEY>)
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        log_path = self.root.parent / f"snapshotter-{time.monotonic_ns()}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen([*LAZYLAYER, "snapshotter", "--config", str(self.config_path),
                                             "--address", str(self.socket), "--root", str(self.root)],
                                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(),
                                            env={**os.environ, "LAZYLAYER_CONFIG": "", **self.env})
        # accepting, not just there: a killed snapshotter leaves its socket file behind
        wait_until(lambda: accepts(self.socket), self.process, self.log, "snapshotter not accepting")

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean stop; SIGKILL: a crash."""
        if self.process is not None:
            stop_process(self.process, signum, timeout=30)
            self.process = None

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def snapshots(self) -> list[dict]:
        done = subprocess.run([*LAZYLAYER, "snapshotter", "--config", str(self.config_path), "--list", "--json"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "LAZYLAYER_CONFIG": ""})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@dataclass
class Stack:
    front: RunningDaemon
    snapshotter: SnapshotterProcess
    containerd: Containerd
    front_config: dict

    def restart_front(self) -> None:
        """SIGKILL the front and start it again on the same mountpoint, cache and run dir."""
        self.front.kill()
        self.front = start_daemon(self.front.workdir, workers=1, config=self.front_config,
                                  run_dir=self.front.run_dir)

    def ctr(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.containerd.ctr(*args, **kw)

    def snapshotter_metrics(self) -> str:
        address = self.front_config["snapshotter"]["metrics_address"]
        return requests.get(f"http://{address}/metrics", timeout=10).text

    def layer_fetched(self, digest: str) -> int:
        """Compressed bytes the front fetched for a layer (``sha256:`` + hex ``digest``)."""
        rows = [l for l in self.front.call("status")["cached_layers"] if l["digest"] == f"sha256:{digest}"]
        return sum(r["fetched"] for r in rows)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # short paths: unix sockets (containerd's, its shims') have a 108-byte limit
    workdir = Path(tempfile.mkdtemp(prefix="ll-ctrd-", dir="/tmp"))
    front = None
    snapshotter = containerd = None
    try:
        # lazy only: no prefetch, no background fetch, so fetched bytes are the bytes read
        front_config = {"prefetch": {"enabled": False}, "background": {"enabled": False},
                        "snapshotter": {"address": str(workdir / "sn.sock"), "root": str(workdir / "sn"),
                                        "check_interval": 0.5, "resolve_timeout": 30.0,
                                        "metrics_address": f"127.0.0.1:{free_port()}"}}
        front = start_daemon(workdir / "front", workers=1, config=front_config)
        snapshotter = SnapshotterProcess(front.config_path, workdir / "sn.sock", workdir / "sn")
        snapshotter.start()
        containerd = start_containerd(workdir / "c", SNAPSHOTTER, snapshotter.socket, NAMESPACE)
        stack = Stack(front, snapshotter, containerd, front_config)
        yield stack
        front = stack.front
    finally:
        if containerd is not None:
            containerd.stop()
        if snapshotter is not None:
            snapshotter.stop()
        if front is not None:
            front.stop()
        unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
