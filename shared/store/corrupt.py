"""What the cache does with corruption it finds: a record that does not decode is a typed error
for whatever it belongs to, and an environment that cannot be opened or read safely is moved
aside and started afresh.

Why: the cache is a cache. Everything in it can be fetched again, so a bad disk, a truncated
file or a stray write must cost a refetch, never the daemon: msgpack's FormatError used to escape
a FUSE handler, and a data.mdb shorter than LMDB's own page count kills the reader with SIGBUS the
first time it touches a page past the end, which no exception handler can catch. That last case is
checked before anyone maps the file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time

import lmdb
import msgpack

from lazylayer.shared.errors import CorruptCacheError

log = logging.getLogger(__name__)


_UNDECODABLE = (ValueError, TypeError, KeyError, struct.error, msgpack.UnpackException)


class decoding:
    """``with decoding(what):`` turns any failure to decode the record of ``what`` into
    CorruptCacheError. A class, not a generator context manager: the front decodes a record per
    request, and contextlib's version cost ~2.6 us of each (this one ~0.3)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is not None and issubclass(kind, _UNDECODABLE):
            raise CorruptCacheError(f"{self.what}: the cached record does not decode ({kind.__name__}); "
                                    "the cache is damaged") from None


def unhealthy(path: str) -> str | None:
    """Why the environment at ``path`` cannot be used safely (None: it can, or it is absent).

    Opens it read-only without locking just long enough to read LMDB's meta page: the last
    page number it has written must lie inside the file."""
    data = os.path.join(path, "data.mdb")
    try:
        size = os.stat(data).st_size
    except FileNotFoundError:
        return None
    try:
        env = lmdb.open(path, readonly=True, lock=False, max_dbs=0)
    except lmdb.Error as exc:
        return f"it cannot be opened ({exc})"
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    if size < needed:
        return f"data.mdb is {size} bytes but LMDB has written {needed} (truncated)"
    return None


def hold_open(path: str) -> int:
    """Register this process as a user of the environment at ``path`` (a shared flock on
    ``<path>/users.lock``, kept until the returned fd is closed). The first user, the one that
    gets the lock exclusively, checks the environment and sets a damaged one aside: checking an
    environment someone is writing could read a meta page mid-write and throw a healthy cache away."""
    fd = os.open(os.path.join(path, "users.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        set_aside_if_unhealthy(path)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def set_aside_if_unhealthy(path: str) -> str | None:
    """Move a damaged environment's files to ``<path>/damaged-<time>/`` so a fresh one starts;
    returns where they went (None when the environment was fine). One log line says why."""
    reason = unhealthy(path)
    if reason is None:
        return None
    aside = os.path.join(path, f"damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.makedirs(aside, mode=0o700)
    for name in ("data.mdb", "lock.mdb"):
        try:
            os.rename(os.path.join(path, name), os.path.join(aside, name))
        except FileNotFoundError:
            pass
    log.error("cache %s is damaged: %s; moved it to %s and starting an empty cache (everything in it "
              "can be fetched again)", path, reason, aside)
    return aside
