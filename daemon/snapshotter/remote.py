"""Remote layers: which Prepare asks for one, and reaching it through the front's layer store.

The snapshotter is a client of the front exactly as podman is: a layer is the directory
``MNT/<base64(ref)>/<digest>/diff`` (looking it up makes the front resolve it), creating
``MNT/<base64(ref)>/<digest>/use`` takes a reference that keeps the layer resolved, and
``rmdir MNT/<base64(ref)>/<digest>`` gives it back (daemon/layout.py, daemon/fs.py). References
live with the FUSE connection: a front that takes the connection over keeps them (its journal,
daemon/journal.py), a fresh mount has none, so the snapshotter notices a new connection and
takes them again.

Labels: containerd's unpacker names the snapshot it wants committed in ``containerd.io/snapshot.ref``
(the chain id); the image and layer come from the labels ``ctr-remote image rpull`` sets
(stargz-snapshotter's fs/source) or the ones containerd's CRI plugin sets (pkg/snapshotters).
"""

from __future__ import annotations

import base64
import concurrent.futures
import errno
import logging
import os
from dataclasses import dataclass

from lazylayer.daemon import mounts
from lazylayer.daemon.journal import CONNECTION_FILE
from lazylayer.daemon.layout import DIFF, DIGEST_NAME, USE
from lazylayer.shared.errors import LazyLayerError, MountError, NotFoundError, RequestTimeoutError

log = logging.getLogger(__name__)

#: the chain id containerd wants the layer committed under
TARGET_LABEL = "containerd.io/snapshot.ref"
#: marks a snapshot this snapshotter committed itself from the layer store (as upstream)
REMOTE_LABEL = "containerd.io/snapshot/remote"
REMOTE_LABEL_VALUE = "remote snapshot"
#: (image ref, layer digest) label pairs: ctr-remote's, then CRI's
SOURCE_LABELS = (
    ("containerd.io/snapshot/remote/stargz.reference", "containerd.io/snapshot/remote/stargz.digest"),
    ("containerd.io/snapshot/cri.image-ref", "containerd.io/snapshot/cri.layer-digest"),
)


@dataclass(frozen=True)
class RemoteLayer:
    ref: str
    digest: str


def requested_layer(labels: dict[str, str]) -> RemoteLayer | None:
    """The layer a Prepare may take from the layer store: a target and a (ref, digest) pair."""
    if not labels.get(TARGET_LABEL):
        return None
    for ref_label, digest_label in SOURCE_LABELS:
        ref, digest = labels.get(ref_label, ""), labels.get(digest_label, "")
        if ref and DIGEST_NAME.match(digest):
            return RemoteLayer(ref, digest)
    return None


class LayerStore:
    """The front's layer store at ``mountpoint``, seen from another process."""

    def __init__(self, mountpoint: str, run_dir: str, resolve_timeout: float) -> None:
        self.mountpoint = mountpoint
        self.run_dir = run_dir
        self.resolve_timeout = resolve_timeout
        #: lookups that may hang on a registry run here, so a gRPC thread can give up on them
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def layer_dir(self, layer: RemoteLayer) -> str:
        # URL-safe base64: the standard alphabet's '/' would make a path of it (the front takes both)
        name = base64.urlsafe_b64encode(layer.ref.encode()).decode()
        return os.path.join(self.mountpoint, name, layer.digest)

    def diff_path(self, layer: RemoteLayer) -> str:
        return os.path.join(self.layer_dir(layer), DIFF.decode())

    def front_id(self) -> str | None:
        """Which FUSE connection serves the store: the id its front publishes (RUN/connection,
        kept across takeovers) and its mount's device; None if none is mounted. Not the front's
        pid: a takeover changes it while the references stay. Not the device alone: the kernel
        hands a new mount the lowest free device number, often the dead one's."""
        entry = mounts.mount_at(self.mountpoint)
        if entry is None or entry.fstype != mounts.FUSE_TYPE:
            return None
        try:
            with open(os.path.join(self.run_dir, CONNECTION_FILE), encoding="ascii", errors="replace") as f:
                connection = f.read().strip()
        except OSError:
            connection = "?"
        return f"{connection}@{entry.device}"

    def resolve(self, layer: RemoteLayer) -> None:
        """Make the front resolve the layer (fetch and verify its TOC); raises if it cannot
        within ``resolve_timeout``."""
        if self.front_id() is None:
            raise MountError(f"no lazylayer front serves the layer store at {self.mountpoint}")
        future = self._pool.submit(os.stat, self.diff_path(layer))
        try:
            future.result(timeout=self.resolve_timeout)
        except concurrent.futures.TimeoutError:
            raise RequestTimeoutError(f"layer {layer.digest} of {layer.ref} not resolved within "
                                      f"{self.resolve_timeout:.0f} s") from None
        except OSError as exc:
            kind = NotFoundError if exc.errno == errno.ENOENT else LazyLayerError
            raise kind(f"layer {layer.digest} of {layer.ref}: {exc.strerror} (see `lazylayer status`)") from None

    def hold(self, layer: RemoteLayer) -> None:
        """Take one reference (the `use` file of the additional layer store protocol)."""
        try:
            fd = os.open(os.path.join(self.layer_dir(layer), USE.decode()), os.O_CREAT | os.O_WRONLY, 0o600)
        except FileNotFoundError:
            return  # the front counted the reference and answers ENOENT, as stargz-store does
        except OSError as exc:
            raise LazyLayerError(f"cannot hold layer {layer.digest} of {layer.ref}: {exc.strerror}") from None
        os.close(fd)
        raise LazyLayerError(f"{self.mountpoint} is not a lazylayer layer store (a `use` file was created)")

    def release(self, layer: RemoteLayer) -> None:
        """Give one reference back; a front that restarted meanwhile had none to give back."""
        try:
            os.rmdir(self.layer_dir(layer))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot release layer %s of %s: %s", layer.digest, layer.ref, exc.strerror)
