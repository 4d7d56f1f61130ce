"""Item 10: containerd with a remote snapshotter - `lazylayer snapshotter` over lazylayer's layer
store against upstream's containerd-stargz-grpc - pulling and running the app image.

For every sample, on each side: drop_caches, a fresh store (empty cache), the side's snapshotter
and a fresh containerd (Debian's, on its own root, state and socket, CRI off) with that
snapshotter as proxy plugin; then timed one after the other:

- **rpull**: `ctr-remote image rpull --plain-http --snapshotter S APP_REF` (manifest, config, and
  one remote Prepare per layer: the snapshotter resolves the layer and containerd downloads none);
- **run**: `ctr run --rm --snapshotter S APP_REF ... python3.11 /app/main.py` (the container's
  overlay mount over the lazily served layers; the app's output is checked), and the total.

Store and containerd start-up are not timed (item 8 times a store's start). Same registry, same
lazylayer-converted images, both modes of items 8 and 9 (prefetch off / on). `Containerd` and
`start_containerd` are also what tests/containerd/ runs containerd with.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bench.app import PYTHON, APP_DIR, app_env
from bench.errors import BenchError
from bench.images import SITE_PACKAGES, BenchImage
from bench.lazy import lazylayer_command, start_daemon, unmount_under, wait_until
from bench.machine import drop_caches
from bench.peer import GoPeer
from bench.peers import LAZY_CONFIG, MODE_TITLE, MODES
from bench.results import Results
from lazylayer.shared.procs import die_with_parent, stop_process

NAMESPACE = "bench"
#: containerd-stargz-grpc's config per mode (fs config keys, as stargz-store's in bench/peer.py)
GRPC_CONFIG = {
    "lazy": "noprefetch = true\nno_background_fetch = true\nno_prometheus = true\n",
    "prefetch": "no_prometheus = true\n",
}


def accepts(path: Path) -> bool:
    """Whether a unix socket accepts connections (a killed server leaves its socket file)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


@dataclass
class Containerd:
    """A containerd of our own: root, state and socket under ``workdir``."""

    workdir: Path
    socket: Path
    process: subprocess.Popen
    log_path: Path
    namespace: str = NAMESPACE

    def ctr(self, *args: str, binary: str = "ctr", timeout: float = 600, check: bool = True
            ) -> subprocess.CompletedProcess:
        done = subprocess.run([binary, "--address", str(self.socket), "--namespace", self.namespace, *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise BenchError(f"{binary} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}\n"
                             f"containerd log tail:\n{self.log()[-3000:]}")
        return done

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Kill what a failure left running (shims outlive containerd), then stop containerd."""
        if self.process.poll() is None:
            tasks = self.ctr("task", "ls", "-q", check=False).stdout.split()
            for task in tasks:
                self.ctr("task", "kill", "-s", "SIGKILL", task, check=False)
            deadline = time.monotonic() + 10
            while tasks and time.monotonic() < deadline:
                tasks = [t for t in tasks if self.ctr("task", "delete", t, check=False).returncode != 0]
                time.sleep(0.2)
            for container in self.ctr("container", "ls", "-q", check=False).stdout.split():
                self.ctr("container", "rm", container, check=False)
        stop_process(self.process, timeout=30)
        unmount_under(self.workdir)


def start_containerd(workdir: Path, plugin: str, address: Path, namespace: str = NAMESPACE) -> Containerd:
    """containerd with the snapshotter at ``address`` registered as proxy plugin ``plugin``.
    ``workdir`` must be short: containerd's sockets live under it."""
    workdir.mkdir(parents=True, exist_ok=True)
    config, sock = workdir / "config.toml", workdir / "c.sock"
    config.write_text(f"""version = 2
root = "{workdir / 'root'}"
state = "{workdir / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[proxy_plugins.{plugin}]
  type = "snapshot"
  address = "{address}"
""")
    log_path = workdir / f"containerd-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["containerd", "--config", str(config), "--log-level", "info"], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
    running = Containerd(workdir, sock, process, log_path, namespace)
    try:
        wait_until(lambda: accepts(sock), process, running.log, f"containerd does not accept on {sock}")
    except BaseException:
        running.stop()
        raise
    return running


def missing_tools() -> str:
    """Why item 10 cannot run here ("" when it can)."""
    absent = [tool for tool in ("containerd", "ctr", "ctr-remote", "runc") if shutil.which(tool) is None]
    return f"{', '.join(absent)} missing (scripts/setup installs them)" if absent else ""


class ContainerdItem:
    def __init__(self, image: BenchImage, area: Path, results: Results, peer: GoPeer, workers: int) -> None:
        self.image, self.area, self.results, self.peer, self.workers = image, area, results, peer, workers
        self.skipped = missing_tools()
        for mode in MODES:
            t = MODE_TITLE[mode]
            results.row(10, f"ctrd_total_{mode}", f"containerd: rpull + run the app, total ({t})", None)
            results.row(10, f"ctrd_rpull_{mode}", f"  ctr-remote image rpull ({t})", None)
            results.row(10, f"ctrd_run_{mode}", f"  ctr run of the app ({t})", None)

    def sides(self, run: int) -> tuple[str, ...]:
        sides = ("lazylayer", "go") if self.peer.grpc_binary is not None else ("lazylayer",)
        return sides if run % 2 else tuple(reversed(sides))

    def run(self, run: int, say: Callable[[str], None]) -> None:
        if self.skipped:
            say(f"item 10 skipped: {self.skipped}")
            return
        for mode in MODES:
            for side in self.sides(run):
                say(f"run {run}: {side}, {MODE_TITLE[mode]}: containerd rpull + run")
                self.sample(side, mode, run)

    def sample(self, side: str, mode: str, run: int) -> None:
        ref = self.image.app_prefetch_ref if mode == "prefetch" else self.image.app_ref
        plugin = "lazylayer" if side == "lazylayer" else "stargz"
        with self._snapshotter(side, mode) as (address, log):
            containerd = start_containerd(Path(tempfile.mkdtemp(prefix="llc-", dir="/tmp")), plugin, address)
            try:
                start = time.perf_counter()
                containerd.ctr("image", "rpull", "--plain-http", "--snapshotter", plugin, ref, binary="ctr-remote")
                pulled = time.perf_counter()
                env = [arg for key, value in app_env(f"/{SITE_PACKAGES}").items() for arg in ("--env", f"{key}={value}")]
                output = containerd.ctr("run", "--rm", "--snapshotter", plugin, *env, ref, f"app-{run}-{mode}",
                                        PYTHON, f"/{APP_DIR}/main.py").stdout
                ran = time.perf_counter()
            except BenchError as exc:
                raise BenchError(f"{exc}\n{side} snapshotter log tail:\n{log()[-2000:]}") from None
            finally:
                containerd.stop()
                shutil.rmtree(containerd.workdir, ignore_errors=True)
        if output != self.image.app_output:
            raise BenchError(f"the app printed {output!r} under containerd ({side}), {self.image.app_output!r} here")
        for key, seconds in (("total", ran - start), ("rpull", pulled - start), ("run", ran - pulled)):
            row = self.results.rows[f"ctrd_{key}_{mode}"]
            (row.lazy if side == "lazylayer" else row.go).append(seconds)

    @contextmanager
    def _snapshotter(self, side: str, mode: str) -> Iterator[tuple[Path, Callable[[], str]]]:
        """A fresh store and snapshotter of ``side``: the socket to register, a log reader."""
        area = self.area / side
        shutil.rmtree(area, ignore_errors=True)
        area.mkdir(parents=True)
        address = area / "snapshotter.sock"
        log_path = area / "snapshotter.log"
        config = area / f"lazylayer-{mode}.toml"
        config.write_text(LAZY_CONFIG[mode])
        drop_caches()
        daemon = None
        with open(log_path, "ab") as log:
            if side == "lazylayer":
                daemon = start_daemon(area, area / "cache", self.workers, config)
                env = {**os.environ, "LAZYLAYER_DAEMON_MOUNTPOINT": str(daemon.mountpoint),
                       "LAZYLAYER_DAEMON_RUN_DIR": str(daemon.run_dir), "LAZYLAYER_CONFIG": ""}
                command = [*lazylayer_command(), "snapshotter", "--config", str(config), "--address", str(address),
                           "--root", str(area / "snapshotter")]
            else:
                assert self.peer.grpc_binary is not None
                (area / "go.toml").write_text(GRPC_CONFIG[mode])
                env = dict(os.environ)
                command = [str(self.peer.grpc_binary), "-address", str(address), "-root", str(area / "root"),
                           "-config", str(area / "go.toml"), "-log-level", "warn"]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, preexec_fn=die_with_parent())

        def read_log() -> str:
            return log_path.read_text(errors="replace") if log_path.exists() else ""

        try:
            wait_until(lambda: accepts(address), process, read_log, f"{side} snapshotter does not accept on {address}")
            yield address, read_log
        finally:
            process.send_signal(2)  # SIGINT: containerd-stargz-grpc unmounts and cleans up (upstream)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                stop_process(process)
            if daemon is not None:
                daemon.stop()
            unmount_under(area)
            shutil.rmtree(area, ignore_errors=True)
