"""LayerView through a real FUSE mount: the conformance cases as os calls on a mounted directory.

Each test layer is pushed as a one-layer image to a real registry and read at
``MNT/<base64(ref)>/<digest>/diff``, which the daemon resolves on first access through a real
worker (manifest, footer + TOC, TOC digest check) - the additional-layer-store path. A stack is
pushed as one image; its merged view is written into the cache as `lazylayer mount` does and
read at ``MNT/.images/<view id>``.

The registry and one daemon per OverlayOpaqueType are started once per test session, on first
use (the conformance conftest builds one implementation object per test), and stopped at
interpreter exit; each daemon dies with pytest anyway (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import errno
import itertools
import os
import shutil
import tempfile
from pathlib import Path

from lazylayer.shared.config import load_config
from lazylayer.shared.store.env import Store, StoreOptions, open_store
from lazylayer.shared.store.merged import MergedViews
from lazylayer.shared.store.metadata import OpaqueXattr
from tests.conformance.view import LayerView, Stat
from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.support.layers import BuiltLayer
from tests.support.registry import Layer, RunningRegistry, push_image, start_registry


class MountedView:
    """LayerView over a directory of a mounted filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> str:
        return str(self.root / path) if path else str(self.root)

    def lstat(self, path: str) -> Stat:
        try:
            st = os.lstat(self._path(path))
        except NotADirectoryError as exc:
            # The kernel says ENOTDIR for a path through a file ("d/f/x"); the LayerView
            # contract calls that a missing path.
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from exc
        return Stat(st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, st.st_size,
                    st.st_blocks, st.st_mtime_ns // 1_000_000_000)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._path(path)))

    def dirent_inodes(self, path: str) -> dict[str, int]:
        with os.scandir(self._path(path)) as entries:
            return {entry.name: entry.inode() for entry in entries}

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self._path(path), name, follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self._path(path), follow_symlinks=False)

    def read(self, path: str, offset: int, size: int) -> bytes:
        fd = os.open(self._path(path), os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)


class _Session:
    """The shared registry, daemons (by opaque type) and a writer handle on each daemon's cache."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="ll-conformance-"))
        self.registry: RunningRegistry = start_registry(self.workdir / "registry")
        self.daemons: dict[OpaqueXattr, RunningDaemon] = {}
        self.stores: dict[OpaqueXattr, Store] = {}
        self.tags = itertools.count(1)
        atexit.register(self.close)

    def daemon(self, opaque: OpaqueXattr) -> RunningDaemon:
        if opaque not in self.daemons:
            self.daemons[opaque] = start_daemon(
                self.workdir / f"daemon-{opaque.name.lower()}", workers=1,
                config={"fuse": {"opaque_type": opaque.name.lower()}, "background": {"enabled": False}})
        return self.daemons[opaque]

    def store(self, opaque: OpaqueXattr) -> Store:
        """A writer on the daemon's cache, for merged views (what `lazylayer mount` writes)."""
        if opaque not in self.stores:
            daemon = self.daemon(opaque)
            config = load_config(daemon.config_path, env={}).config
            self.stores[opaque] = open_store(StoreOptions.from_config(config.cache))
        return self.stores[opaque]

    def push(self, layers: list[BuiltLayer]) -> str:
        tag = f"t{next(self.tags)}"
        push_image(self.registry, "conformance/fuse", tag,
                   [Layer(l.blob, annotations=dict(l.result.annotations()), diff_id=l.result.diff_id) for l in layers])
        return f"{self.registry.host}/conformance/fuse:{tag}"

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        for daemon in self.daemons.values():
            daemon.stop()
        self.registry.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


_session: _Session | None = None


def _shared() -> _Session:
    global _session
    if _session is None:
        _session = _Session()
    return _session


class FuseViews:
    """The conformance implementation: views through the daemons' mounts."""

    def __init__(self, scratch: Path) -> None:
        self.session = _shared()
        self.mounts: list[tuple[RunningDaemon, str]] = []

    def open(self, layer: BuiltLayer, opaque: OpaqueXattr) -> LayerView:
        ref = self.session.push([layer])
        return MountedView(self.session.daemon(opaque).layer_dir(ref, layer.digest))

    def open_image(self, layers: list[BuiltLayer]) -> LayerView:
        opaque = OpaqueXattr.TRUSTED
        daemon = self.session.daemon(opaque)
        ref = self.session.push(layers)
        digests = [entry["digest"] for entry in daemon.call("image", {"ref": ref})["layers"]]
        MergedViews(self.session.store(opaque)).create(digests)
        target = f"/conformance/{ref}"
        view = daemon.call("open_view", {"ref": ref, "target": target, "layers": digests})
        self.mounts.append((daemon, target))
        return MountedView(Path(view["path"]))

    def close(self) -> None:
        for daemon, target in self.mounts:
            daemon.call("umount", {"target": target})
