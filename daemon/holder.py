"""The FUSE connection holder (`lazylayer holder`) and the front's link to it.

Why a process of its own: the kernel keeps a FUSE connection only while some process holds its
/dev/fuse fd. The front crashes, runs out of memory and gets upgraded; the holder does nothing but
keep the fd open (plus the INIT request and a small journal, see below), so it has nothing to
crash on. A starting front asks it over a root-only unix socket (RUN/holder.sock, SCM_RIGHTS)
for the connection and serves it (daemon/fuseconn.py); when there is none yet, the front mounts
and hands the new connection over. A front that finds another front attached asks the holder,
which sends that one SIGTERM (it finishes what it serves and exits, leaving everything mounted)
before answering: an upgrade.

The journal is what the kernel may still name that is not derived from LMDB: the store layout's
inode numbers (allocated as names are first looked up) and the `lazylayer mount` records. The
front appends records as they happen; the next front replays them. Stopping the holder
(SIGTERM) is the real stop: it unmounts the journal's user mounts and the store.
"""

from __future__ import annotations

import array
import json
import logging
import os
import selectors
import signal
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from lazylayer.daemon import mounts
from lazylayer.daemon.journal import live_mounts
from lazylayer.shared.errors import LazyLayerError, MountError
from lazylayer.shared.perms import private_dir

log = logging.getLogger(__name__)

SOCKET_NAME = "holder.sock"
_MAX_MESSAGE = 1 << 16
_BATCH = 100  # journal records per message (a SEQPACKET message must fit the socket buffer)


def socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, SOCKET_NAME)


def _send(sock: socket.socket, message: dict[str, Any], fd: int | None = None) -> None:
    data = json.dumps(message).encode()
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
    sock.sendmsg([data], ancillary)


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, int | None]:
    """One message and the fd it carries; (None, None) at EOF."""
    data, ancdata, _flags, _addr = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
    fd = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fd = array.array("i", payload[:4])[0]
    if not data:
        return None, fd
    return json.loads(data), fd


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


@dataclass(frozen=True)
class Connection:
    """An open FUSE connection: /dev/fuse fd (ours to close), the kernel's INIT request, where."""

    fd: int
    init: bytes
    mountpoint: str


@dataclass
class _Held:
    conn: Connection
    journal: list[dict[str, Any]] = field(default_factory=list)
    #: the merged views' read-only connection mounted on the store's .images (daemon/viewconn.py)
    views: Connection | None = None


@dataclass
class _Front:
    sock: socket.socket
    pid: int


class _Stop(Exception):
    pass


class Holder:
    """One run dir's connections (the layer store's, and the merged views' mounted on its
    .images, which `lazylayer mount` binds) and whichever front serves them."""

    def __init__(self, run_dir: str) -> None:
        self.path = socket_path(run_dir)
        self.held: _Held | None = None
        self.front: _Front | None = None
        #: a front waiting for the attached one to hand over
        self.waiting: _Front | None = None
        self.takeovers = 0
        self.selector = selectors.DefaultSelector()

    def serve(self) -> None:
        private_dir(os.path.dirname(self.path))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(8)
        self.selector.register(listener, selectors.EVENT_READ)

        def stop(signum: int, _frame: Any) -> None:
            raise _Stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # an operator's reload of the whole group must not end the mounts: nothing to re-read here
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("holding FUSE connections for fronts at %s", self.path)
        try:
            while True:
                for key, _ in self.selector.select():
                    if key.fileobj is listener:
                        self._accept(listener)
                    else:
                        self._message(key.fileobj)  # type: ignore[arg-type]
        except _Stop as exc:
            log.info("%s: unmounting what the holder holds", exc)
        finally:
            listener.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._release()

    def _accept(self, listener: socket.socket) -> None:
        sock, _ = listener.accept()
        pid, uid = _peer(sock)
        if uid not in (0, os.getuid()):
            log.warning("refused a holder client (pid %d, uid %d)", pid, uid)
            sock.close()
            return
        sock.setblocking(True)
        self.selector.register(sock, selectors.EVENT_READ)

    def _message(self, sock: socket.socket) -> None:
        try:
            message, fd = _recv(sock)
        except (OSError, ValueError) as exc:
            log.warning("dropping a holder client: %s", exc)
            message, fd = None, None
        if message is None:
            self._gone(sock)
            return
        op = message.get("op")
        if op == "hello":
            front = _Front(sock, _peer(sock)[0])
            if self.front is not None and self.front.sock is not sock:
                log.info("front %d takes over from front %d: asking it to hand over", front.pid, self.front.pid)
                self.waiting = front
                try:
                    os.kill(self.front.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            else:
                self._attach(front)
        elif op == "adopt" and fd is not None:
            if self.held is not None:
                _close(self.held)
            self.held = _Held(Connection(fd, bytes.fromhex(message["init"]), message["mountpoint"]))
            log.info("holding the FUSE connection of %s", message["mountpoint"])
        elif op == "adopt_views" and fd is not None and self.held is not None:
            if self.held.views is not None:
                os.close(self.held.views.fd)
            self.held.views = Connection(fd, bytes.fromhex(message["init"]), message["mountpoint"])
            log.info("holding the FUSE connection of %s", message["mountpoint"])
        elif op == "journal" and self.held is not None:
            self.held.journal.append(message["record"])
        elif fd is not None:
            os.close(fd)

    def _attach(self, front: _Front) -> None:
        self.front = front
        held = self.held
        if held is None:
            _send(front.sock, {"takeovers": self.takeovers})
            return
        self.takeovers += 1
        log.info("front %d takes the connection of %s over (takeover %d)", front.pid, held.conn.mountpoint,
                 self.takeovers)
        _send(front.sock, {"takeovers": self.takeovers, "mountpoint": held.conn.mountpoint,
                           "init": held.conn.init.hex(), "records": len(held.journal),
                           "views": held.views is not None}, held.conn.fd)
        if held.views is not None:
            _send(front.sock, {"mountpoint": held.views.mountpoint, "init": held.views.init.hex()}, held.views.fd)
        for start in range(0, len(held.journal), _BATCH):
            _send(front.sock, {"journal": held.journal[start:start + _BATCH]})

    def _gone(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        sock.close()
        if self.waiting is not None and self.waiting.sock is sock:
            self.waiting = None
        if self.front is not None and self.front.sock is sock:
            log.info("front %d left", self.front.pid)
            self.front = None
            if self.waiting is not None:
                waiting, self.waiting = self.waiting, None
                self._attach(waiting)

    def _release(self) -> None:
        """The real stop: unmount the user mounts the journal names, then the store."""
        if self.held is None:
            return
        for target in live_mounts(self.held.journal):
            _unmount(target)
        _unmount(self.held.conn.mountpoint)  # lazily: the views' mount on its .images goes with it
        _close(self.held)
        self.held = None


def _close(held: _Held) -> None:
    os.close(held.conn.fd)
    if held.views is not None:
        os.close(held.views.fd)


def _unmount(path: str) -> None:
    try:
        mounts.unmount(path, lazy=True)
    except MountError as exc:
        log.warning("%s", exc)


@dataclass
class Handover:
    """What the holder gave a starting front."""

    takeovers: int
    conn: Connection | None
    journal: list[dict[str, Any]]
    #: the merged views' connection (daemon/viewconn.py), held beside ``conn``
    views: Connection | None = None


class HolderLink:
    """The front's end: take the connection over, hand a new one in, journal as it goes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.broken = False

    @classmethod
    def connect(cls, run_dir: str) -> "HolderLink | None":
        """None when no holder runs for ``run_dir``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(socket_path(run_dir))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        return cls(sock)

    def hello(self, timeout: float) -> Handover:
        """Blocks while an attached front hands over (up to ``timeout``)."""
        self.sock.settimeout(timeout)
        try:
            _send(self.sock, {"op": "hello"})
            header, fd = _recv(self.sock)
            if header is None:
                raise MountError("the FUSE connection holder closed the connection")
            views = None
            if header.get("views"):
                message, views_fd = _recv(self.sock)
                if message is None or views_fd is None:
                    raise MountError("the FUSE connection holder closed the connection before the views'")
                views = Connection(views_fd, bytes.fromhex(message["init"]), message["mountpoint"])
            journal: list[dict[str, Any]] = []
            while len(journal) < header.get("records", 0):
                batch, _ = _recv(self.sock)
                if batch is None:
                    raise MountError("the FUSE connection holder closed the connection mid-journal")
                journal.extend(batch["journal"])
        except socket.timeout:
            raise MountError(f"the front attached to the holder did not hand over within {timeout:.0f} s") from None
        finally:
            self.sock.settimeout(None)
        conn = None
        if fd is not None:
            conn = Connection(fd, bytes.fromhex(header["init"]), header["mountpoint"])
        return Handover(header["takeovers"], conn, journal, views)

    def adopt(self, conn: Connection, op: str = "adopt") -> None:
        """Hand the holder the store's connection (``op`` "adopt") or the views' ("adopt_views",
        after the store's)."""
        _send(self.sock, {"op": op, "mountpoint": conn.mountpoint, "init": conn.init.hex()}, conn.fd)

    def record(self, record: dict[str, Any]) -> None:
        """Append to the journal. A holder gone (restarted) costs the next takeover, not this front."""
        if self.broken:
            return
        try:
            _send(self.sock, {"op": "journal", "record": record})
        except OSError as exc:
            self.broken = True
            log.error("the FUSE connection holder is gone (%s): the next front start will remount", exc)

    def alive(self) -> bool:
        """False once the holder went away (it never speaks first: readable means EOF)."""
        if not self.broken:
            try:
                self.broken = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                pass
            except OSError:
                self.broken = True
        return not self.broken

    def close(self) -> None:
        self.sock.close()


def take_connection(run_dir: str, mountpoint: str, required: bool) -> tuple[HolderLink | None, Handover | None]:
    """A starting front's first step, before it locks the run dir: the holder (None if none
    runs) and what it gives - it waits while an attached front hands over, so the lock is free
    by then. ``required`` (`--takeover`): refuse unless there is a connection to take over."""
    link = HolderLink.connect(run_dir)
    try:
        handover = link.hello(60.0) if link is not None else None
        if handover is not None and handover.conn is not None:
            if handover.conn.mountpoint != mountpoint:
                os.close(handover.conn.fd)
                raise MountError(f"the holder's connection is mounted at {handover.conn.mountpoint}, not at {mountpoint}")
            if not _still_mounted(handover.conn):
                os.close(handover.conn.fd)
                if handover.views is not None:
                    os.close(handover.views.fd)
                handover = Handover(handover.takeovers, None, [])
            elif handover.views is not None and not _still_mounted(handover.views):
                os.close(handover.views.fd)
                handover.views = None
        if required and (handover is None or handover.conn is None):
            raise MountError(f"--takeover: no FUSE connection holder with a connection runs for {run_dir} "
                             "(start `lazylayer holder` before the first front)")
    except BaseException:
        if link is not None:
            link.close()
        raise
    return link, handover


def _still_mounted(conn: Connection) -> bool:
    """Whether the holder's connection is still the one at its mountpoint (someone may have
    unmounted it while no front ran: a new mount then replaces it in the holder). Read from
    mountinfo: a stat would wait for a front to answer, and that front is the caller."""
    entry = mounts.mount_at(conn.mountpoint, resolve=False)
    if entry is not None and entry.fstype == mounts.FUSE_TYPE:
        return True
    log.warning("the holder's connection is no longer mounted at %s: mounting afresh", conn.mountpoint)
    return False


def run_holder(run_dir: str) -> int:
    try:
        Holder(run_dir).serve()
    except (OSError, LazyLayerError) as exc:
        log.error("holder: %s", exc)
        return 1
    return 0
