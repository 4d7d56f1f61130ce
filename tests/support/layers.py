"""Small test layers: a tar built in memory with tarfile, converted by our eStargz writer.

Items describe tar entries (files, dirs, links, devices, whiteouts, opaque markers, xattrs,
suid/sgid/sticky); `build_layer` returns the blob bytes and what the writer reported.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from lazylayer.shared.estargz.writer import ConvertResult, WriterOptions, convert_tar

MTIME = 1_714_564_800  # 2024-05-01T12:00:00Z


@dataclass(frozen=True)
class Item:
    name: str
    type: bytes
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    link: str = ""
    major: int = 0
    minor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Item:
    return Item(name, tarfile.REGTYPE, data, mode, **kw)  # type: ignore[arg-type]


def directory(name: str, mode: int = 0o755, **kw: object) -> Item:
    return Item(name.rstrip("/") + "/", tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str, **kw: object) -> Item:
    return Item(name, tarfile.SYMTYPE, mode=0o777, link=target, **kw)  # type: ignore[arg-type]


def hardlink(name: str, target: str) -> Item:
    return Item(name, tarfile.LNKTYPE, link=target)


def chardev(name: str, major: int, minor: int, **kw: object) -> Item:
    return Item(name, tarfile.CHRTYPE, major=major, minor=minor, **kw)  # type: ignore[arg-type]


def blockdev(name: str, major: int, minor: int, **kw: object) -> Item:
    return Item(name, tarfile.BLKTYPE, major=major, minor=minor, **kw)  # type: ignore[arg-type]


def fifo(name: str, **kw: object) -> Item:
    return Item(name, tarfile.FIFOTYPE, **kw)  # type: ignore[arg-type]


def whiteout(path: str) -> Item:
    """The marker that hides ``path`` of lower layers (an empty file, as Docker writes it)."""
    parent, _, base = path.rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opaque(dirpath: str) -> Item:
    """The marker that makes ``dirpath`` opaque."""
    return file(f"{dirpath.rstrip('/')}/.wh..wh..opq")


def make_tar(items: list[Item]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in items:
            info = tarfile.TarInfo(item.name)
            info.type = item.type
            info.mode = item.mode
            info.uid, info.gid = item.uid, item.gid
            info.mtime = item.mtime
            info.linkname = item.link
            info.devmajor, info.devminor = item.major, item.minor
            info.size = len(item.data)
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in item.xattrs.items()}
            tar.addfile(info, io.BytesIO(item.data) if item.data else None)
    return out.getvalue()


@dataclass(frozen=True)
class BuiltLayer:
    blob: bytes
    result: ConvertResult

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.blob).hexdigest()


def build_layer(items: list[Item], *, chunk_size: int = 4 << 20, prefetch: tuple[str, ...] = ()) -> BuiltLayer:
    out = io.BytesIO()
    result = convert_tar(io.BytesIO(make_tar(items)), out,
                         WriterOptions(chunk_size=chunk_size, prefetch=prefetch, workers=1))
    return BuiltLayer(out.getvalue(), result)


def binary_items(path: str) -> list[Item]:
    """``path`` and the shared libraries it needs (ldd), at their host paths."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    libs = [p for line in out.splitlines() for p in line.split() if p.startswith("/")]
    items: list[Item] = []
    for lib in dict.fromkeys(libs):
        real = os.path.realpath(lib)
        items.append(file(lib.lstrip("/"), Path(real).read_bytes(), 0o755))
    return items
