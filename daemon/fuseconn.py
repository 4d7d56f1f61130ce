"""A FUSE connection the front can lose and a later front can take over.

Why not `pyfuse3.init(ops, MNT)`: libfuse then opens /dev/fuse, mounts and reads the kernel's
FUSE_INIT itself, and its session answers nothing until it has processed an INIT. The kernel sends
INIT once per connection, so a second front given the same /dev/fuse fd could never start. So:

1. `mount_fuse` opens /dev/fuse, mounts it with mount(2) and reads the INIT request itself; the
   fd and those INIT bytes are what the holder (daemon/holder.py) keeps for later fronts.
2. `start_session` starts pyfuse3 on one end of a SOCK_SEQPACKET socketpair named
   ``/dev/fd/N`` (libfuse takes that as an already-open fd: no mount) and writes the saved INIT
   into the other end. While libfuse processes it, pyfuse3 calls ``ops.init()`` (before the reply
   is written and before any task waits on fd N): fd N becomes an epoll set of /dev/fuse (and,
   later, the merged views' connection: daemon/viewconn.py), which libfuse reads and writes
   through daemon/viewconn.c, or, without that library, `dup2` puts /dev/fuse at fd N. So the INIT
   reply goes to the kernel (a fresh mount completes; after a takeover the kernel answers ENOENT
   for the old unique, which libfuse ignores) and every later read is the kernel's queue.
   Same INIT bytes and same libfuse: the session negotiates exactly what the kernel agreed.
3. After a takeover, `resend` (FUSE_NOTIFY_RESEND, Linux 6.9+) moves the requests a dead front
   had read but never answered back to the kernel's pending queue: they are served again instead
   of leaving their callers in an unkillable wait forever.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
from typing import Any

import pyfuse3

from lazylayer.daemon import dircache
from lazylayer.daemon.holder import Connection
from lazylayer.shared.errors import MountError

log = logging.getLogger(__name__)

_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 1, 2, 4
#: enum fuse_notify_code in include/uapi/linux/fuse.h
_FUSE_NOTIFY_RESEND = 7
#: mount(2) data options the kernel's fuse takes (anything else in our option set is libfuse's)
_KERNEL_OPTIONS = ("default_permissions", "allow_other")


def _option(options: set[str], key: str, default: str) -> str:
    for option in options:
        if option.startswith(key + "="):
            return option.split("=", 1)[1]
    return default


def mount_fuse(mountpoint: str, options: set[str]) -> Connection:
    """Mount a new FUSE file system at ``mountpoint`` and read its INIT request (the kernel sends
    it while mounting). ``options`` as for pyfuse3 (fsname=, subtype=, nosuid, nodev, ...)."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        data = [f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}", f"group_id={os.getgid()}"]
        data += [o for o in _KERNEL_OPTIONS if o in options]
        flags = (_MS_NOSUID if "nosuid" in options else 0) | (_MS_NODEV if "nodev" in options else 0)
        flags |= _MS_RDONLY if "ro" in options else 0
        source = _option(options, "fsname", "lazylayer")
        fstype = "fuse." + _option(options, "subtype", "lazylayer")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(source.encode(), mountpoint.encode(), fstype.encode(), flags, ",".join(data).encode()) != 0:
            err = ctypes.get_errno()
            raise MountError(f"cannot mount FUSE at {mountpoint}: {os.strerror(err)}")
        init = os.read(fd, 1 << 20)
    except BaseException:
        os.close(fd)
        raise
    return Connection(fd, init, mountpoint)


def start_session(ops: Any, conn: Connection) -> None:
    """`pyfuse3.init` on ``conn`` (see the module doc); `pyfuse3.main` then serves it. ``ops``
    must call the ``on_init`` hook it is given from its ``init()``."""
    ours, feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    session_fd = ours.detach()  # libfuse owns it from now on (fuse_session_destroy closes it)
    fuse_fd = conn.fd

    def on_init() -> None:
        if not dircache.serve(fuse_fd, session_fd):
            os.dup2(fuse_fd, session_fd, inheritable=False)
        problem = dircache.problem()  # known once the kernel's FUSE_INIT was read
        if problem is not None:
            log.warning("directory listings go through FUSE every time: %s", problem)

    ops.on_init = on_init
    with feed:
        try:
            pyfuse3.init(ops, f"/dev/fd/{session_fd}", set())
        except RuntimeError as exc:
            os.close(session_fd)
            raise MountError(f"cannot start the FUSE session for {conn.mountpoint}: {exc}") from None
        feed.send(conn.init)  # read by pyfuse3.main's first task


def resend(conn: Connection) -> None:
    """Ask the kernel to send again every request read but not answered on this connection."""
    try:
        os.write(conn.fd, struct.pack("<IiQ", 16, _FUSE_NOTIFY_RESEND, 0))
    except OSError as exc:  # a kernel before 6.9: those requests' callers stay blocked
        log.warning("FUSE_NOTIFY_RESEND refused (%s): requests the previous front was serving are lost",
                    exc.strerror)
