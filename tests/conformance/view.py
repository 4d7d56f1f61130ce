"""The interface the conformance cases are written against: what a process sees of one layer.

It is shaped like the os module on purpose (lstat/listdir/readlink/getxattr/listxattr/pread,
errors as OSError with an errno), so the FUSE implementation is a thin wrapper over os calls on a
mounted directory and the very same cases check both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Stat:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    mtime: int


class LayerView(Protocol):
    """One layer's filesystem. Paths are relative to the layer root ("" is the root).

    Every method raises FileNotFoundError for a missing path and OSError(ENODATA) for a
    missing xattr, as the os functions do.
    """

    def lstat(self, path: str) -> Stat: ...

    def listdir(self, path: str) -> list[str]:
        """Names in the directory, sorted."""
        ...

    def dirent_inodes(self, path: str) -> dict[str, int]:
        """Name -> inode as the directory entries report it (readdir's d_ino)."""
        ...

    def readlink(self, path: str) -> str: ...

    def getxattr(self, path: str, name: str) -> bytes: ...

    def listxattr(self, path: str) -> list[str]: ...

    def read(self, path: str, offset: int, size: int) -> bytes: ...
