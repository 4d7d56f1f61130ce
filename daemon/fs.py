"""The filesystem: pyfuse3 Operations serving the layer store and merged image views from LMDB.

The store layout above the layers (MNT/<base64(ref)>/<digest>/{diff,info,blob}, merged views
under MNT/.images) and who may reach it are daemon/layout.py's. Looking up ``diff`` resolves the
layer on demand (image manifest, then footer + TOC through a worker) and holds it for the layout;
creating ``use`` takes a reference and ``rmdir MNT/<ref>/<digest>`` gives it back (upstream's
"release"), both answering ENOENT as upstream does (daemon/held.py). Only root (or the store
group) may cause any of it.

Inode numbers, two spaces that cannot collide:
- ``>= 2**32``: layer and merged-view nodes, ``layer_id << 32 | node_id`` (metadata.inode_of,
  layer ids start at 1). Stable across restarts: node ids come from the TOC order. A layer reached
  through two refs is the same directory inode (the kernel treats it as an alias, the contents
  are identical and the page cache is shared).
- ``1 .. 2**32-1``: the store layout itself (1 = MNT), allocated in order of first lookup and
  never reused while the FUSE connection lives: journaled to the holder, so a front that takes
  the connection over keeps them (daemon/layout.py LayoutInodes). `fh` numbers carry their inode
  for the same reason (daemon/handles.py).

Why the hit path looks like this (limits §2, §6-7): lookup/getattr/readdir/readlink/xattr are one
short LMDB read txn each, never IPC; a read that hits LMDB never leaves the process; files open
with ``keep_cache`` so warm re-reads are served by the kernel page cache; the only awaits are on
misses (worker fetch) and on resolving. Nothing here writes LMDB.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

import lmdb
import pyfuse3
import trio

from lazylayer.daemon.fuseguard import guard_operations
from lazylayer.daemon.handles import BlobHandle, ContentHandle, FileHandle, Handle, Handles, inode_of
from lazylayer.daemon.held import HeldLayers
from lazylayer.daemon.journal import Journal
from lazylayer.daemon.layer import Layer, Resolver
from lazylayer.daemon.layout import (BLOB, DIFF, DIGEST_NAME, DIR_KINDS, IMAGES_DIR, INFO, STATE_DIR, USE, Kind,
                                     LayoutInodes, LayoutNode, StoreAccess, decode_ref, layer_info, name_of)
from lazylayer.daemon.listings import Cursor, Listing, Listings
from lazylayer.shared.config import Config
from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.logs import redact
from lazylayer.shared.store.env import Store
from lazylayer.shared.store.metadata import (ROOT_ID, BLOCK_SIZE, Metadata, NodeAttr, NodeRef, OpaqueXattr,
                                             split_inode, visible_xattrs)

log = logging.getLogger(__name__)

LAYER_INODES = 1 << 32
_READDIR_PAGE = 1024
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass(frozen=True)
class FsSettings:
    """From config [fuse]."""

    opaque: OpaqueXattr = OpaqueXattr.TRUSTED
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    layer_timeout: float = 3600.0
    access: StoreAccess = StoreAccess()

    @classmethod
    def from_config(cls, config: Config) -> "FsSettings":
        fuse = config.fuse
        return cls(OpaqueXattr[fuse.opaque_type.upper()], fuse.attr_timeout, fuse.entry_timeout,
                   fuse.layer_timeout, StoreAccess.from_group(fuse.store_group))


@guard_operations
class LazyFS(pyfuse3.Operations):
    """The daemon's one mount. Every handler runs in the daemon's trio loop."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, store: Store, resolver: Resolver, settings: FsSettings,
                 on_read: Callable[[int, str | None], None] | None = None) -> None:
        super().__init__()
        self.store = store
        self.meta = Metadata(store)
        self.resolver = resolver
        self.settings = settings
        self.on_read = on_read
        #: merged views served under .images (view id -> the layers it reads)
        self.views: dict[int, list[Layer]] = {}
        self.layout = LayoutInodes(pyfuse3.ROOT_INODE, LAYER_INODES)
        self._handles = Handles()
        #: listings of layer directories (daemon/listings.py)
        self._listings = Listings()
        self._nursery: trio.Nursery | None = None
        #: daemon/fuseconn.py's hook, run while libfuse processes FUSE_INIT
        self.on_init: Callable[[], None] | None = None
        #: after a takeover: set once the layers the previous front served are resolved again
        self.restoring: trio.Event | None = None
        self.journal = Journal(self.layout)
        #: the layers the layout holds (daemon/held.py)
        self.held = HeldLayers(resolver, self.journal)

    def init(self) -> None:
        if self.on_init is not None:
            self.on_init()

    def attach(self, nursery: trio.Nursery) -> None:
        """Where read-ahead tasks run (the daemon's nursery)."""
        self._nursery = nursery
        self.held.serving()

    # -- inode spaces --------------------------------------------------------------------------

    def _layout_inode(self, node: LayoutNode) -> int:
        inode = self.layout.inode(node)
        if inode is None:
            raise pyfuse3.FUSEError(errno.EIO)  # "too many inodes", as upstream
        return inode

    def _layout(self, inode: int) -> LayoutNode:
        node = self.layout.node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def _layout_held(self, inode: int) -> LayoutNode:
        """`_layout`, with the layer a node belongs to held again: after a takeover the kernel
        still names layout inodes of layers this front has not looked up yet."""
        node = self._layout(inode)
        if node.kind in (Kind.LAYER, Kind.INFO, Kind.BLOB) and self.held.get(node.ref, node.digest) is None:
            await self._hold(node.ref, node.digest)
        return node

    # -- attributes ----------------------------------------------------------------------------

    def _entry(self, inode: int, attr: NodeAttr, timeout: float | None = None) -> pyfuse3.EntryAttributes:
        """``timeout``: how long the kernel may keep it (default: layer contents never change,
        so `layer_timeout`; the store layout's own nodes, `entry_timeout`/`attr_timeout`)."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.generation = 0
        if timeout is not None:
            e.entry_timeout = e.attr_timeout = timeout
        elif inode >= LAYER_INODES:
            e.entry_timeout = e.attr_timeout = self.settings.layer_timeout
        else:
            e.entry_timeout, e.attr_timeout = self.settings.entry_timeout, self.settings.attr_timeout
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = BLOCK_SIZE
        e.st_blocks = attr.blocks
        e.st_atime_ns = 0
        e.st_ctime_ns = 0
        e.st_mtime_ns = attr.mtime * 1_000_000_000
        return e

    def _layout_attr(self, node: LayoutNode) -> NodeAttr:
        access = self.settings.access
        mode, gid = access.mode(node.kind), access.gid or 0
        if node.kind in DIR_KINDS:
            return NodeAttr(mode, gid=gid, nlink=2)
        if node.kind is Kind.BLOB:
            return NodeAttr(mode, gid=gid, size=self._held_layer(node).record.blob_size)
        return NodeAttr(mode, gid=gid, size=len(self._content(node)))

    def _layout_entry(self, node: LayoutNode) -> pyfuse3.EntryAttributes:
        inode = self._layout_inode(node)
        if node.kind not in DIR_KINDS:  # files whose content changes are never cached by the kernel
            return self._entry(inode, self._layout_attr(node), 0.0)
        entry = self._entry(inode, self._layout_attr(node))
        entry.st_mtime_ns = self.held.mtime_ns
        if node.kind is Kind.IMAGES:  # the views' mountpoint (daemon/viewconn.py): unmounting it
            entry.entry_timeout = self.settings.layer_timeout  # walks here, front or no front
        return entry

    def _node_attr(self, ref: NodeRef, txn: lmdb.Transaction | None = None) -> NodeAttr:
        attr = self.meta.getattr(ref, txn)
        if attr is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return attr

    def _held_layer(self, node: LayoutNode) -> Layer:
        layer = self.held.get(node.ref, node.digest)
        if layer is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return layer

    def _content(self, node: LayoutNode) -> bytes:
        if node.kind is Kind.INFO:
            return (json.dumps(layer_info(self._held_layer(node)), sort_keys=True) + "\n").encode()
        if node.kind is Kind.STATE_FILE:
            layer = self._any_layer(node.layer_id)
            return (json.dumps(redact(layer.state_json()), sort_keys=True) + "\n").encode()
        raise pyfuse3.FUSEError(errno.EISDIR)

    def _any_layer(self, layer_id: int) -> Layer:
        for layer in self.held.layers():
            if layer.layer_id == layer_id:
                return layer
        for layer in self.resolver.layers():
            if layer.layer_id == layer_id:
                return layer
        raise pyfuse3.FUSEError(errno.ENOENT)

    # -- lookups -------------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent_inode >= LAYER_INODES:
            parent = split_inode(parent_inode)
            if name == STATE_DIR and parent.node_id == ROOT_ID and self.resolver.known(parent.layer_id):
                return self._layout_entry(LayoutNode(Kind.STATE_DIR, layer_id=parent.layer_id))

            def find(txn: lmdb.Transaction) -> tuple[NodeRef, NodeAttr] | None:
                ref = self.meta.lookup(parent, name, txn)
                attr = None if ref is None else self.meta.getattr(ref, txn)
                return None if attr is None else (ref, attr)

            found = self.store.read(find)
            if found is None:
                return self._absent()
            return self._entry(found[0].inode, found[1])
        node = self._layout(parent_inode)
        if node.kind in (Kind.ROOT, Kind.REF, Kind.LAYER):
            self._may_fetch(ctx)
        if node.kind is Kind.ROOT:
            if name == IMAGES_DIR:
                return self._layout_entry(LayoutNode(Kind.IMAGES))
            ref = decode_ref(name)
            if ref is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._layout_entry(LayoutNode(Kind.REF, ref=ref))
        if node.kind is Kind.REF:
            digest = name.decode("ascii", "replace")
            if not DIGEST_NAME.match(digest):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._layout_entry(LayoutNode(Kind.LAYER, ref=node.ref, digest=digest))
        if node.kind is Kind.LAYER:
            if name == DIFF:  # a layout entry: looking it up again keeps the layer resolved
                layer = await self._hold(node.ref, node.digest)
                root = self._guard(layer.root_node)
                return self._entry(root.inode, self._node_attr(root), self.settings.entry_timeout)
            if name in (INFO, BLOB):
                await self._hold(node.ref, node.digest)
                return self._layout_entry(LayoutNode(Kind.INFO if name == INFO else Kind.BLOB, node.ref, node.digest))
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.kind is Kind.IMAGES:
            view_id = int(name) if name.isdigit() else -1
            if view_id not in self.views:
                raise pyfuse3.FUSEError(errno.ENOENT)
            root = NodeRef(view_id, ROOT_ID)
            return self._entry(root.inode, self._node_attr(root), self.settings.entry_timeout)
        if node.kind is Kind.STATE_DIR:
            layer = self._any_layer(node.layer_id)
            if name != f"{layer.digest}.json".encode():
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._layout_entry(LayoutNode(Kind.STATE_FILE, layer_id=node.layer_id))
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    def _absent(self) -> pyfuse3.EntryAttributes:
        """A name a layer does not have, cached by the kernel as a negative dentry (inode 0):
        an interpreter's start stats thousands of names that do not exist, through every layer
        of an overlay, and a layer never gains one."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.settings.layer_timeout
        return e

    def _may_fetch(self, ctx: Any) -> None:
        """Refuse (EACCES) a caller who may not make us resolve or fetch anything. The
        kernel already refuses them at the store's root-only directories; this holds even if
        the mount's modes or options were ever loosened."""
        if ctx is not None and not self.settings.access.may_fetch(ctx.uid, ctx.gid, ctx.pid):
            log.warning("uid %d (pid %d) may not use the layer store: refused", ctx.uid, ctx.pid)
            raise pyfuse3.FUSEError(errno.EACCES)

    @staticmethod
    def _guard(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except LazyLayerError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def _hold(self, ref: str, digest: str) -> Layer:
        """`hold` for FUSE handlers: ENOENT for what does not exist, EIO for the rest."""
        try:
            return await self.held.hold(ref, digest)
        except LazyLayerError as exc:
            log.warning("cannot serve layer %s of %s: %s", digest, ref, exc)
            raise pyfuse3.FUSEError(errno.ENOENT if exc.errno == errno.ENOENT else errno.EIO) from None

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode >= LAYER_INODES:
            return self._entry(inode, self._node_attr(split_inode(inode)))
        return self._layout_entry(await self._layout_held(inode))

    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        if inode < LAYER_INODES:
            raise pyfuse3.FUSEError(errno.EINVAL)
        attr = self._node_attr(split_inode(inode))
        if not stat.S_ISLNK(attr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return attr.link_target.encode("utf-8", "surrogateescape")

    # -- xattrs --------------------------------------------------------------------------------

    def _xattrs(self, inode: int) -> dict[str, bytes]:
        if inode < LAYER_INODES:
            self._layout(inode)
            return {}
        return visible_xattrs(self._node_attr(split_inode(inode)), self.settings.opaque)

    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        # pyfuse3 answers size queries and ERANGE itself from the full value.
        value = self._xattrs(inode).get(name.decode("utf-8", "surrogateescape"))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return bytes(value)

    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        return [key.encode("utf-8", "surrogateescape") for key in self._xattrs(inode)]

    # -- directories ---------------------------------------------------------------------------

    async def _handle(self, fh: int) -> Handle:
        """The handle behind ``fh``; one an earlier front opened is opened again (daemon/handles.py)."""
        handle = self._handles.get(fh)
        if handle is None:
            handle = await self._file_handle(inode_of(fh))
            self._handles.put(fh, handle)
        return handle

    async def opendir(self, inode: int, ctx: Any = None) -> int:
        """The fh is the inode: listings are kept by directory (daemon/listings.py), and with the
        kernel caching them there is no opendir at all (daemon/dircache.py)."""
        if inode >= LAYER_INODES:
            if not self._node_attr(split_inode(inode)).is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        elif (await self._layout_held(inode)).kind not in DIR_KINDS:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        inode = inode_of(fh)  # an earlier front's fh may carry a serial (daemon/handles.py)
        if inode == 0:  # the kernel sends no opendir, and the library that names the directory is missing
            log.error("READDIR without a directory: this connection was started with daemon/dircache.py's "
                      "library and this front runs without it")
            raise pyfuse3.FUSEError(errno.EIO)
        if inode >= LAYER_INODES:
            ref = split_inode(inode)
            cursor = self._listings.cursor(ref)
        else:
            ref, cursor = None, Cursor(await self._layout_listing(inode), exhausted=True)
        index = start_id
        while True:
            if index >= len(cursor.entries):
                if cursor.exhausted:
                    return
                assert ref is not None
                self._more(ref, cursor)
                continue
            name, entry = cursor.entries[index]
            if not pyfuse3.readdir_reply(token, name, entry, index + 1):
                return
            index += 1

    async def releasedir(self, fh: int) -> None:
        pass

    async def _layout_listing(self, inode: int) -> Listing:
        node = await self._layout_held(inode)
        if node.kind not in DIR_KINDS:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        children: list[LayoutNode] = []
        if node.kind is Kind.ROOT:
            children = [LayoutNode(Kind.REF, ref=ref) for ref in self.held.refs()]
        elif node.kind is Kind.REF:
            children = [LayoutNode(Kind.LAYER, node.ref, d) for d in self.held.digests(node.ref)]
        elif node.kind is Kind.LAYER and (layer := self.held.get(node.ref, node.digest)) is not None:
            root = layer.record.root
            return [(DIFF, self._entry(root.inode, self._node_attr(root))),
                    (INFO, self._layout_entry(LayoutNode(Kind.INFO, node.ref, node.digest))),
                    (BLOB, self._layout_entry(LayoutNode(Kind.BLOB, node.ref, node.digest)))]
        return [(name_of(child).encode(), self._layout_entry(child)) for child in children]

    def _more(self, parent: NodeRef, cursor: Cursor) -> None:
        """List the next page of a layer directory (names sorted; attributes in the same txn)."""
        page = self.meta.readdir(parent, cursor.after, _READDIR_PAGE)
        if page:
            cursor.after = page[-1][0]

            def attrs(txn: lmdb.Transaction) -> list[NodeAttr | None]:
                return [self.meta.getattr(ref, txn) for _, ref in page]

            for (name, ref), attr in zip(page, self.store.read(attrs)):
                if attr is not None:
                    cursor.entries.append((name, self._entry(ref.inode, attr)))
        cursor.exhausted = len(page) < _READDIR_PAGE
        self._listings.listed(parent, cursor)

    # -- files ---------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        handle = await self._file_handle(inode)
        fh = self._handles.add(inode, handle)
        if isinstance(handle, ContentHandle):
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        # Layer content and blobs never change: let the kernel keep its page cache across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def _file_handle(self, inode: int) -> Handle:
        if inode < LAYER_INODES:
            node = await self._layout_held(inode)
            if node.kind is Kind.BLOB:
                return BlobHandle(self._held_layer(node))
            return ContentHandle(self._content(node))
        ref = split_inode(inode)
        attr = self._node_attr(ref)
        if attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            if self.restoring is not None and not self.resolver.known(ref.layer_id):
                await self.restoring.wait()  # the kernel may open files of layers a takeover holds again
            layer = await self.resolver.layer_for(ref.layer_id)
        except LazyLayerError as exc:
            log.warning("open of inode %d: %s", inode, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return FileHandle(layer, ref, attr.size)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = await self._handle(fh)
        if isinstance(handle, ContentHandle):
            return handle.data[off:off + size]
        try:
            if isinstance(handle, BlobHandle):
                data = await handle.layer.read_at(off, size)
            else:
                data = await handle.layer.read(handle.node, handle.size, off, size)
        except LazyLayerError as exc:
            if self.on_read is not None:
                self.on_read(0, exc.kind)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if self.on_read is not None:
            self.on_read(len(data), None)
        if isinstance(handle, BlobHandle):
            return data
        end = off + len(data)
        if off == handle.next_offset and end < handle.size and end >= handle.ahead_mark:
            self._read_ahead(handle, end)
        handle.next_offset = end
        return data

    def _read_ahead(self, handle: FileHandle, offset: int) -> None:
        """A sequential reader crossed into the next chunk: fetch the chunks ahead of it."""
        chunks = handle.layer.remote.chunks_ahead(handle.node, offset)
        handle.ahead_mark = chunks[0].end if chunks else math.inf  # type: ignore[assignment]
        if chunks and self._nursery is not None:
            self._nursery.start_soon(handle.layer.read_ahead, handle.node, offset)

    async def release(self, fh: int) -> None:
        self._handles.pop(fh)

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- a read-only filesystem, except the additional layer store's reference counting ---------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any = None) -> Any:
        node = self.layout.node(parent_inode)
        if node is not None and node.kind is Kind.LAYER and name == USE:
            self._may_fetch(ctx)
            self.held.use(node.ref, node.digest, await self._hold(node.ref, node.digest))
            raise pyfuse3.FUSEError(errno.ENOENT)
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        node = self.layout.node(parent_inode)
        if node is not None and node.kind is Kind.REF:
            self._may_fetch(ctx)
            if self.held.release(node.ref, name.decode("ascii", "replace")):
                raise pyfuse3.FUSEError(errno.ENOENT)
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setattr(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)
