"""Open file handles, with `fh` numbers a later front can make sense of (a directory's fh is its
inode: daemon/listings.py).

Why the number carries the inode: after a takeover (daemon/holder.py) the kernel goes on sending
the `fh` values an earlier front handed out, and pyfuse3's read/readdir/release give us nothing
else. So ``fh = serial << 60 | inode``: a front that does not know an `fh` reopens its inode
(`LazyFS._handle`) and loses only per-open hints (the read-ahead position). The serial keeps up
to 15 concurrent opens of one inode apart; a 16th reuses the last slot, whose displaced owner
is reopened the same way on its next request. Layer ids must stay below 2**28 for that
(inode = layer id << 32 | node id).

Serial 15 is daemon/layeropen.c's: the read-only opens of layer files it answers in C, one fh
per inode, whose releases never reach Python. Their handles are built on a first read like any
unknown fh and kept in a bounded most-recently-used table (one dropped is built again).
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from dataclasses import dataclass

import pyfuse3

from lazylayer.daemon.layer import Layer
from lazylayer.shared.store.metadata import NodeRef

log = logging.getLogger(__name__)

_SERIAL_SHIFT = 60
_SERIALS = 15
#: the serial of the fhs daemon/layeropen.c hands out
C_SERIAL = 15
INODE_MASK = (1 << _SERIAL_SHIFT) - 1
#: handles of C-opened fhs kept at most (a read-ahead position each; rebuilt when dropped)
MAX_C_HANDLES = 4096


@dataclass
class FileHandle:
    """An open file of a layer: reads go through its Layer; sequential readers get read-ahead."""

    layer: Layer
    node: NodeRef
    size: int
    next_offset: int = 0
    ahead_mark: int = 0


@dataclass
class BlobHandle:
    """An open `blob` file: reads go to the layer's verified whole blob."""

    layer: Layer


@dataclass
class ContentHandle:
    """An open layout file (info, state): its bytes as of open."""

    data: bytes


Handle = FileHandle | BlobHandle | ContentHandle


def inode_of(fh: int) -> int:
    return fh & INODE_MASK


class Handles:
    """fh -> handle for one front."""

    def __init__(self) -> None:
        self._open: dict[int, Handle] = {}
        #: handles of fhs opened in C, most recently used last
        self._c_opened: OrderedDict[int, Handle] = OrderedDict()

    def add(self, inode: int, handle: Handle) -> int:
        if inode > INODE_MASK:
            log.error("inode %d is beyond what a file handle can name: refusing the open", inode)
            raise pyfuse3.FUSEError(errno.EIO)
        fh = inode
        for serial in range(_SERIALS):
            fh = serial << _SERIAL_SHIFT | inode
            if fh not in self._open:
                break
        self._open[fh] = handle
        return fh

    def get(self, fh: int) -> Handle | None:
        if fh >> _SERIAL_SHIFT != C_SERIAL:
            return self._open.get(fh)
        handle = self._c_opened.get(fh)
        if handle is not None:
            self._c_opened.move_to_end(fh)
        return handle

    def put(self, fh: int, handle: Handle) -> None:
        if fh >> _SERIAL_SHIFT != C_SERIAL:
            self._open[fh] = handle
            return
        self._c_opened[fh] = handle
        if len(self._c_opened) > MAX_C_HANDLES:
            self._c_opened.popitem(last=False)

    def pop(self, fh: int) -> None:
        self._open.pop(fh, None)
