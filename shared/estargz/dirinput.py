"""Reading a directory tree into an `EntryList`, the way a layer tar of it would look.

The walk is deterministic (names sorted, parents before children) so converting the same tree
twice gives the same blob. The root itself is not an entry (as in layer diffs made by container
builders). Files with several names become one regular entry plus `hardlink` entries, detected
by (st_dev, st_ino). xattrs are read from the file system. Sockets cannot be stored in a tar and
are skipped, as GNU tar does. Overlay-style whiteouts (char 0/0) are kept as plain device nodes.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from functools import lru_cache

from lazylayer.shared.errors import FormatError, NotFoundError
from lazylayer.shared.estargz.compress import Payload
from lazylayer.shared.estargz.entries import EntryList, SourceEntry
from lazylayer.shared.estargz.toc import EntryType

log = logging.getLogger(__name__)


def read_dir(root: str | os.PathLike[str]) -> EntryList:
    """Every file, directory, link, device and fifo under ``root`` (not ``root`` itself)."""
    top = os.path.abspath(os.fspath(root))
    if not os.path.isdir(top):
        raise NotFoundError(f"{top}: not a directory")
    entries = EntryList()
    inodes: dict[tuple[int, int], SourceEntry] = {}
    try:
        _walk(top, "", entries, inodes)
    except OSError as exc:
        raise FormatError(f"cannot read {exc.filename or top}: {exc.strerror or exc}") from exc
    return entries


def _walk(path: str, name: str, entries: EntryList, inodes: dict[tuple[int, int], SourceEntry]) -> None:
    for child in sorted(os.listdir(path)):
        child_path = os.path.join(path, child)
        child_name = f"{name}/{child}" if name else child
        st = os.lstat(child_path)
        entry = _entry(child_path, child_name, st, inodes)
        if entry is None:
            continue
        entries.add(entry)
        if entry.type is EntryType.DIR:
            _walk(child_path, child_name, entries, inodes)


def _entry(path: str, name: str, st: os.stat_result,
           inodes: dict[tuple[int, int], SourceEntry]) -> SourceEntry | None:
    mode = st.st_mode
    entry = SourceEntry(
        name=name, type=EntryType.REG, mode=stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid,
        uname=_user(st.st_uid), gname=_group(st.st_gid), mtime=st.st_mtime_ns // 1_000_000_000,
        xattrs=_xattrs(path),
    )
    if stat.S_ISDIR(mode):
        entry.type = EntryType.DIR
        return entry
    if stat.S_ISSOCK(mode):
        log.warning("%s: skipping a socket (a tar cannot hold one)", path)
        return None
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in inodes:
        entry.type, entry.link_target = EntryType.HARDLINK, inodes[key]
        return entry
    if stat.S_ISREG(mode):
        entry.size = st.st_size
        entry.payload = Payload(path, 0, st.st_size) if st.st_size else None
    elif stat.S_ISLNK(mode):
        entry.type, entry.link_name = EntryType.SYMLINK, os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry.type = EntryType.CHAR if stat.S_ISCHR(mode) else EntryType.BLOCK
        entry.dev_major, entry.dev_minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        entry.type = EntryType.FIFO
    else:
        raise FormatError(f"{path}: unsupported file type {stat.S_IFMT(mode):o}")
    if st.st_nlink > 1:
        inodes[key] = entry
    return entry


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # file system without xattr support
        return {}
    return {key: os.getxattr(path, key, follow_symlinks=False) for key in sorted(names)}


@lru_cache(maxsize=None)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=None)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""
