"""Random-access blob sources: the one interface the format reader needs from storage.

The reader never knows whether bytes come from a local file or a registry (workers' registry
client implements the same protocol), so the same parsing and verification code serves
`lazylayer cat BLOB` and the daemon's lazy reads.
"""

from __future__ import annotations

import os
import stat
from typing import Protocol, runtime_checkable

from lazylayer.shared.errors import FormatError, LazyLayerError, NotFoundError


@runtime_checkable
class BlobSource(Protocol):
    """Random access to one blob's compressed bytes."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``, or an error: a short read is a truncated blob."""
        ...


class FileSource:
    """A blob in a local file, read with pread (safe to share between threads)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise LazyLayerError(f"{self.path}: cannot open: {exc.strerror}") from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self._fd)
            raise LazyLayerError(f"{self.path}: not a regular file")
        self._size = info.st_size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self._size:
            raise FormatError(
                f"{self.path}: read of {size} bytes at offset {offset} is outside the "
                f"{self._size}-byte blob (truncated blob?)"
            )
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise FormatError(f"{self.path}: short read at offset {offset} (file changed?)")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """A blob held in memory (tests, freshly written blobs)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self._data):
            raise FormatError(
                f"read of {size} bytes at offset {offset} is outside the {len(self._data)}-byte blob"
            )
        return self._data[offset : offset + size]
