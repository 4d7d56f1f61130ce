"""The snapshotter's semantics, independent of gRPC: containerd's Snapshotter interface over
overlayfs, with remote layers taken from the front's layer store.

```
ROOT/metadata/                 LMDB: the snapshot records (metadata.py)
ROOT/snapshots/<id>/fs         an ordinary snapshot's upper dir (what containerd unpacks into)
ROOT/snapshots/<id>/work       overlayfs' work dir of an active snapshot
MNT/<base64(ref)>/<digest>/diff    a remote snapshot's tree (no directory here)
```

Mounts are *returned*, never made here: containerd mounts them (for unpacking, for a container's
rootfs). So a running container's rootfs does not depend on this process, and a restart of the
snapshotter only has to reopen its metadata. Remote layers appear as lowerdirs on the layer
store's paths, escaped for overlayfs (daemon/mounts.escape_lowerdir).

Remote prepare, as upstream's: a Prepare whose labels name a target and an image layer, and whose
layer the front resolves, is committed at once under the target name and answered with
ALREADY_EXISTS, so containerd never downloads it. Anything else (a plain gzip layer the front
refuses, no front, a timeout) is an ordinary snapshot that containerd unpacks into.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass

from lazylayer.daemon import mounts
from lazylayer.daemon.snapshotter.filters import matches
from lazylayer.daemon.snapshotter.metadata import Kind, MetaStore, Snapshot, summarize
from lazylayer.daemon.snapshotter.remote import (REMOTE_LABEL, REMOTE_LABEL_VALUE, TARGET_LABEL, LayerStore,
                                                 RemoteLayer, requested_layer)
from lazylayer.shared.errors import AlreadyExistsError, LazyLayerError

log = logging.getLogger(__name__)

#: meta key: the front mount (device) on which our layer references were taken
_HELD_ON = b"held_on"


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...]


@dataclass
class PrepareCounts:
    """How Prepares went, for metrics: remote (committed from the store) or local (unpacked)."""

    remote: int = 0
    local: int = 0
    fallback: int = 0  # asked for remote, the store could not serve it


class Snapshotter:
    def __init__(self, root: str, layers: LayerStore) -> None:
        self.root = root
        self.layers = layers
        self.meta = MetaStore(os.path.join(root, "metadata"))
        self.snapshots_dir = os.path.join(root, "snapshots")
        os.makedirs(self.snapshots_dir, mode=0o700, exist_ok=True)
        self.counts = PrepareCounts()
        self._hold_lock = threading.Lock()

    def close(self) -> None:
        self.meta.close()
        self.layers.close()

    # -- paths and mounts ---------------------------------------------------------------------

    def _dir(self, snapshot: Snapshot) -> str:
        return os.path.join(self.snapshots_dir, str(snapshot.id))

    def _lower(self, snapshot: Snapshot) -> str:
        if snapshot.remote:
            return self.layers.diff_path(_layer(snapshot))
        return os.path.join(self._dir(snapshot), "fs")

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        """What containerd mounts for ``snapshot`` (upstream's shapes: a bind without parents or
        for a view of one parent, overlayfs otherwise). Remote ancestors are resolved first, so a
        layer the store cannot serve is UNAVAILABLE now, not EIO inside the container later."""
        parents = list(self.meta.chain(snapshot))
        for parent in parents:
            if parent.remote:
                self.layers.resolve(_layer(parent))
        own = os.path.join(self._dir(snapshot), "fs")
        if not parents:
            mode = "ro" if snapshot.kind is Kind.VIEW else "rw"
            return [Mount("bind", own, (mode, "rbind"))]
        if snapshot.kind is Kind.VIEW and len(parents) == 1:
            return [Mount("bind", self._lower(parents[0]), ("ro", "rbind"))]
        options: list[str] = []
        if snapshot.kind is Kind.ACTIVE:
            options += [f"workdir={os.path.join(self._dir(snapshot), 'work')}", f"upperdir={own}"]
        options.append("lowerdir=" + ":".join(mounts.escape_lowerdir(self._lower(p)) for p in parents))
        return [Mount("overlay", "overlay", tuple(options))]

    def _make_dirs(self, snapshot: Snapshot) -> None:
        base = self._dir(snapshot)
        os.makedirs(base, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(base, "fs"), exist_ok=True)
        os.chmod(os.path.join(base, "fs"), 0o755)  # the container's "/" unless a layer says otherwise
        if snapshot.kind is Kind.ACTIVE:
            os.makedirs(os.path.join(base, "work"), exist_ok=True)
            os.chmod(os.path.join(base, "work"), 0o711)

    def _remove_dir(self, path: str) -> None:
        """Delete a snapshot's directory, unless something is still mounted inside it (rmtree
        would descend into the mount): Cleanup retries it later."""
        if any(m.mountpoint == path or m.mountpoint.startswith(path + "/") for m in mounts.mounts()):
            log.warning("not removing %s yet: something is mounted inside it", path)
            return
        shutil.rmtree(path, ignore_errors=True)

    # -- the Snapshotter interface --------------------------------------------------------------

    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        snapshot = self._create(Kind.ACTIVE, key, parent, labels)
        layer = requested_layer(labels)
        if layer is None:
            self.counts.local += 1
            return self._new_mounts(snapshot)
        target = labels[TARGET_LABEL]
        try:
            if self.meta.find(target) is not None:
                raise AlreadyExistsError(f"target snapshot {target!r} already exists")
            self._commit_remote(snapshot, target, layer)
            log.info("remote snapshot %s: layer %s of %s", target, layer.digest, layer.ref)
        except AlreadyExistsError:
            self.remove(key)  # committed meanwhile, by an earlier or a concurrent pull: as good
        except LazyLayerError as exc:
            log.warning("layer %s of %s is unpacked by containerd: the layer store cannot serve it (%s)",
                        layer.digest, layer.ref, exc)
            self.counts.fallback += 1
            return self._new_mounts(snapshot)
        self.counts.remote += 1
        raise AlreadyExistsError(f"target snapshot {target!r} already exists")

    def _commit_remote(self, active: Snapshot, target: str, layer: RemoteLayer) -> None:
        """Resolve through the front, take a reference, commit as ``target``; undone on failure."""
        self.layers.resolve(layer)
        with self._hold_lock:
            self._note_front()
            self.layers.hold(layer)
        try:
            labels = active.labels | {REMOTE_LABEL: REMOTE_LABEL_VALUE}
            self.meta.commit(active.name, target, labels, remote_ref=layer.ref, remote_digest=layer.digest)
        except BaseException:
            self.layers.release(layer)
            raise
        self._remove_dir(self._dir(active))  # the layer store holds its tree

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        return self._new_mounts(self._create(Kind.VIEW, key, parent, labels))

    def _new_mounts(self, snapshot: Snapshot) -> list[Mount]:
        """The mounts of a snapshot just created; if there are none to give (a remote parent
        the store cannot serve now), the snapshot goes again: containerd never learnt its key."""
        try:
            return self._mounts(snapshot)
        except BaseException:
            self.remove(snapshot.name)
            raise

    def _create(self, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> Snapshot:
        snapshot = self.meta.create(kind, key, parent, labels)
        try:
            self._make_dirs(snapshot)
        except OSError:
            self.meta.remove(key)
            raise
        return snapshot

    def mounts(self, key: str) -> list[Mount]:
        return self._mounts(self.meta.get(key))

    def commit(self, name: str, key: str, labels: dict[str, str]) -> Snapshot:
        active = self.meta.get(key)
        size, inodes = disk_usage(os.path.join(self._dir(active), "fs"))
        committed = self.meta.commit(key, name, labels, size=size, inodes=inodes)
        shutil.rmtree(os.path.join(self._dir(active), "work"), ignore_errors=True)
        return committed

    def remove(self, key: str) -> Snapshot:
        snapshot = self.meta.remove(key)
        if snapshot.remote:
            with self._hold_lock:
                if self.meta.get_meta(_HELD_ON) == (self.layers.front_id() or "").encode():
                    self.layers.release(_layer(snapshot))
        self._remove_dir(self._dir(snapshot))
        return snapshot

    def stat(self, key: str) -> Snapshot:
        return self.meta.get(key)

    def update(self, name: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        return self.meta.update_labels(name, labels, paths)

    def usage(self, key: str) -> tuple[int, int]:
        snapshot = self.meta.get(key)
        if snapshot.kind is Kind.ACTIVE:
            return disk_usage(os.path.join(self._dir(snapshot), "fs"))
        return snapshot.size, snapshot.inodes

    def list(self, filters: list[str]) -> list[Snapshot]:
        return [s for s in self.meta.all() if not filters or any(matches(s, f) for f in filters)]

    def cleanup(self) -> list[str]:
        """Remove directories no snapshot owns (left by a crash or a busy Remove)."""
        owned = {str(s.id) for s in self.meta.all()}
        removed = []
        for name in sorted(os.listdir(self.snapshots_dir)):
            if name not in owned:
                self._remove_dir(os.path.join(self.snapshots_dir, name))
                removed.append(name)
        return removed

    # -- layer references across front restarts ----------------------------------------------

    def _note_front(self) -> None:
        """Before taking a reference: if the front changed since the last ones were taken, they
        are gone with it; take them all again first (callers hold ``_hold_lock``)."""
        current = self.layers.front_id()
        if current is None or self.meta.get_meta(_HELD_ON) == current.encode():
            return
        remote = [s for s in self.meta.all() if s.remote]
        for snapshot in remote:
            try:
                self.layers.resolve(_layer(snapshot))
                self.layers.hold(_layer(snapshot))
            except LazyLayerError as exc:
                log.warning("remote snapshot %s: cannot hold its layer on the new front: %s", snapshot.name, exc)
        self.meta.put_meta(_HELD_ON, current.encode())
        if remote:
            log.info("front %s: took references on the layers of %d remote snapshots", current, len(remote))

    def check_front(self) -> None:
        """Called periodically: re-hold layers after a front restart."""
        with self._hold_lock:
            self._note_front()

    def summary(self) -> dict[str, int]:
        return summarize(self.meta.all())


def _layer(snapshot: Snapshot) -> RemoteLayer:
    return RemoteLayer(snapshot.remote_ref, snapshot.remote_digest)


def disk_usage(path: str) -> tuple[int, int]:
    """(bytes in blocks, inodes) under ``path``, hard links counted once (as containerd's)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames, ""] if dirpath == path else [*dirnames, *filenames]:
            try:
                st = os.lstat(os.path.join(dirpath, name) if name else dirpath)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_blocks * 512
    return size, len(seen)
