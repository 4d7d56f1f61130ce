"""The peer: upstream's Go stargz-store (v0.12, built from Debian's packages), run beside lazylayer.

Both are FUSE layer stores with the same layout, MNT/<base64(ref)>/<layer digest>/diff, so the
harness measures them with the same code (bench/peers.py) and only starting and stopping differ.

The binary is built by ../shared/reference/go-stargz-store/build.sh (apt + `go build`, offline
from Debian's Go packages, a few minutes the first time); nothing is ever downloaded as a binary.
When it cannot be built, `GoPeer.reason` says why and every Go column reads "-".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.errors import BenchError
from bench.lazy import unmount_under, wait_for_mount
from lazylayer.shared.procs import die_with_parent, stop_process

REPO = Path(__file__).resolve().parents[1]
#: build.sh of the shared reference (next to the repository, as in every worktree of this project)
BUILD_SCRIPT = REPO.parent / "shared" / "reference" / "go-stargz-store" / "build.sh"
REF_DIR = Path(os.environ.get("REF_DIR", "/var/tmp/go-stargz-store"))
BINARY = REF_DIR / "bin" / "stargz-store"
#: the remote snapshotter, for item 10 (bench/containerd.py)
GRPC_BINARY = REF_DIR / "bin" / "containerd-stargz-grpc"

#: stargz-store's config for each mode. Upstream's defaults prefetch the landmark range and fetch
#: whole layers in the background; "lazy" turns both off (as lazylayer's lazy config does).
GO_CONFIG = {
    "lazy": "noprefetch = true\nno_background_fetch = true\nno_prometheus = true\n",
    "prefetch": "no_prometheus = true\n",
}


@dataclass(frozen=True)
class GoPeer:
    """Whether the Go column can be measured: the binary, or the reason it is missing."""

    binary: Path | None
    reason: str = ""
    version: str = ""
    #: containerd-stargz-grpc (item 10); None when it was not built
    grpc_binary: Path | None = None

    @property
    def available(self) -> bool:
        return self.binary is not None

    def to_dict(self) -> dict[str, object]:
        return {"available": self.available, "binary": str(self.binary) if self.binary else None,
                "reason": self.reason, "version": self.version,
                "grpc_binary": str(self.grpc_binary) if self.grpc_binary else None}


def find_peer(*, build: bool) -> GoPeer:
    """The built stargz-store; with ``build``, run build.sh first when it is missing (a fresh
    machine). Never raises: a missing peer is a reported fact, not a failed benchmark."""
    if not BINARY.exists() or (build and not GRPC_BINARY.exists()):
        if not build:
            return GoPeer(None, f"skipped in --quick: {BINARY} is not built (a full `scripts/bench` builds it)")
        if not BUILD_SCRIPT.exists():
            return GoPeer(None, f"not available: {BUILD_SCRIPT} is missing")
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
        if done.returncode != 0 or not BINARY.exists():
            tail = " / ".join(done.stderr.strip().splitlines()[-3:])
            return GoPeer(None, f"not available: build.sh failed (exit {done.returncode}): {tail}")
    return GoPeer(BINARY, version=_version(), grpc_binary=GRPC_BINARY if GRPC_BINARY.exists() else None)


def _version() -> str:
    """Upstream v0.12.0 as Debian packages it (the binary has no -version flag)."""
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "golang-github-containerd-stargz-snapshotter-dev"],
                          capture_output=True, text=True)
    return f"stargz-store v0.12.0 (Debian {done.stdout.strip()})" if done.returncode == 0 else "stargz-store v0.12.0"


@dataclass
class GoStore:
    """A running stargz-store: its layer store is at ``mountpoint``."""

    mountpoint: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGINT unmounts (upstream's clean stop); anything left is unmounted lazily."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_process(self.process)
        unmount_under(self.mountpoint)


def start_go_store(peer: GoPeer, area: Path, mode: str) -> GoStore:
    """`stargz-store -root AREA/root -config AREA/go.toml AREA/store` with a fresh root (cold
    cache), returned once the FUSE mount is up."""
    if peer.binary is None:
        raise BenchError(f"Go stargz-store {peer.reason}")
    root, mountpoint, config = area / "root", area / "store", area / f"go-{mode}.toml"
    unmount_under(mountpoint)
    shutil.rmtree(root, ignore_errors=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    config.write_text(GO_CONFIG[mode])
    log_path = area / "stargz-store.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(peer.binary), "-root", str(root), "-config", str(config),
                                    "-log-level", "warn", str(mountpoint)],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=die_with_parent())
    store = GoStore(mountpoint, process, log_path)
    try:
        wait_for_mount(mountpoint, process, store.log)
    except BaseException:
        store.stop()
        raise
    return store


@contextmanager
def go_session(peer: GoPeer, area: Path, mode: str) -> Iterator[GoStore]:
    store = start_go_store(peer, area, mode)
    try:
        yield store
    finally:
        store.stop()
