"""The merged views' own read-only FUSE connection, mounted on the store's MNT/.images.

Why: reading a directory listing through FUSE makes the kernel forget the directory's atime
unless the superblock is read-only (fs/fuse: `fuse_invalidate_atime` after every uncached
READDIR), and `stat` asks for atime. So a `find` over a `lazylayer mount` right after a cold one
sent one GETATTR per directory (2,941 on the bench image, ~25 us each on two cores: the walk was
1.6-2.0x a local disk's), although layers never change. The store itself must stay writable
(podman creates `use` and removes layer directories), and a superblock is one connection's.

How: the front mounts a second /dev/fuse connection read-only (and nosuid, nodev like the store)
on MNT/.images, answers its INIT with the bytes libfuse answered the store's, and
daemon/viewconn.c (in daemon/dircache.py's library) multiplexes it into the one pyfuse3 session:
its root is the .images directory's inode, everything below has the same inodes as before, so
LazyFS serves both alike. The holder keeps this fd beside the store's, so views
survive a takeover like the store does; a stop unmounts the store lazily, which takes this mount
with it. It is mounted when the first view is (`open_view` waits for it: the CLI binds whatever
MNT/.images/<id> is then), so the store alone starts as before. Without the library (or if the
mount fails) views are served on the store's connection as before, only slower to walk again.
"""

from __future__ import annotations

import ctypes
import logging
import os

import trio

from lazylayer.daemon import dircache, mounts
from lazylayer.daemon.fuseconn import Connection, mount_fuse, resend
from lazylayer.daemon.holder import HolderLink
from lazylayer.daemon.layout import IMAGES_DIR
from lazylayer.shared.errors import MountError

log = logging.getLogger(__name__)


class ViewsConnection:
    """The views' connection of one front: taken over at start, or mounted before the first
    view is bound (a host that only runs podman or containerd never has it); closed at stop."""

    def __init__(self, mountpoint: str, options: set[str], read_ahead_kb: int) -> None:
        self.mountpoint = mountpoint
        self.path = os.path.join(mountpoint, IMAGES_DIR.decode())
        self.options = options | {"ro"}
        self.read_ahead_kb = read_ahead_kb
        self.conn: Connection | None = None
        self._lock = trio.Lock()
        self._tried = False

    async def take_over(self, taken: Connection, root_inode: int) -> None:
        """A takeover's views connection (initialised, bound at the user's mounts): served from
        the store's INIT on, with the requests the previous front had read sent again."""
        async with self._lock:
            try:
                await self._after_store_init()
                self._attach(taken, None, root_inode)
            except (MountError, OSError) as exc:
                self._detach(taken)  # nobody would answer it: the store's .images shows again
                self._fallback(exc)
                return
            self._tried = True
            resend(taken)

    async def ensure(self, root_inode: int, holder: HolderLink | None) -> None:
        """Before a view is bound (`open_view`): mount the connection once and give it to
        ``holder``. Failing costs the speed-up, nothing else."""
        async with self._lock:
            if self._tried:
                return
            self._tried = True
            try:
                await self._after_store_init()
                conn = await trio.to_thread.run_sync(mount_fuse, self.path, self.options)
                try:
                    self._attach(conn, conn.init, root_inode)
                except MountError:
                    self._detach(conn)
                    raise
                if holder is not None:
                    self.adopt(holder)
                mounts.set_read_ahead(self.path, self.read_ahead_kb)  # its own bdi: as the store's
            except (MountError, OSError) as exc:
                self._fallback(exc)

    async def _after_store_init(self) -> None:
        """A stat of the store from a thread returns once the loop answered its INIT."""
        await trio.to_thread.run_sync(os.stat, self.mountpoint)

    def _detach(self, conn: Connection) -> None:
        try:
            mounts.unmount(self.path, lazy=True)
        except MountError as exc:
            log.warning("%s", exc)
        os.close(conn.fd)

    @staticmethod
    def _fallback(exc: BaseException) -> None:
        log.warning("merged views stay on the store's connection (every walk after a cold one sends a "
                    "GETATTR per directory): %s", exc)

    def _attach(self, conn: Connection, init: bytes | None, root_inode: int) -> None:
        library = dircache.library()
        if library is None:
            raise MountError(dircache.problem() or "daemon/dircache.py's library is not loaded")
        size = len(init) if init is not None else 0
        err = library.lazylayer_viewconn_attach(conn.fd, init, ctypes.c_size_t(size), ctypes.c_uint64(root_inode))
        if err != 0:
            raise MountError(f"cannot serve the connection at {self.path}: {os.strerror(-err)}")
        self.conn = conn
        log.info("merged views served read-only at %s", self.path)

    def adopt(self, holder: HolderLink) -> None:
        """Give the holder our connection (after the store's)."""
        if self.conn is not None:
            holder.adopt(self.conn, "adopt_views")

    def status(self) -> dict[str, object]:
        library = dircache.library()
        attached = library is not None and library.lazylayer_viewconn_attached() == 1
        requests = ctypes.c_ulonglong.in_dll(library, "lazylayer_viewconn_requests").value if library else 0
        return {"read_only": attached, "requests": requests}

    def close(self) -> None:
        """Our fd (the holder keeps its own); the store's lazy unmount takes the mount."""
        if self.conn is not None:
            os.close(self.conn.fd)
            self.conn = None

