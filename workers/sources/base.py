"""The blob-source interface: what the fetcher needs from wherever a layer's bytes live.

Every ranged read of a worker (TOC, demand chunks, prefetch, background pieces, the whole blob)
goes through a `LayerSource`, chosen per layer by ordered handlers (handlers.py); the built-ins
are the registry, the descriptor's ``urls`` and OCI layout directories, and a site adds its own
through the ``lazylayer.sources`` entry point group (an object store, a P2P agent).

A source is only a byte pipe: nothing it returns is trusted. The TOC is checked against the
descriptor's TOC digest, each chunk against its digest, and the whole blob (background fetch,
`download`) against the layer digest, by the fetcher whatever the source. So a plug-in needs
no verification code, and a source serving wrong bytes is refused exactly like a lying registry.

Writing one: subclass `LayerSource`, implement `size` and `read_ranges`; override `check`,
`refresh` and `download` when the backend has something better than the defaults. The handler
is any object with `open(spec)` returning a source, or None when it does not serve that layer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Protocol, runtime_checkable

from lazylayer.shared.errors import DigestMismatchError, RegistryError

#: Bytes `LayerSource.download` asks for per read.
DOWNLOAD_PIECE = 4 << 20


@dataclass(frozen=True)
class LayerSpec:
    """One layer of one image, as its manifest describes it: what a handler decides on."""

    #: the image reference as the front names it (`host/repo:tag`, `oci:/path:tag`, ...)
    ref: str
    digest: str
    size: int
    media_type: str = ""
    #: the descriptor's `urls` (foreign / non-distributable layers)
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict, hash=False)


class LayerSource:
    """Random access to one layer blob. Thread-safe: a worker's job threads share it."""

    #: the handler that made it (set by handlers.py), for logs and `status`
    handler: str = ""

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec

    @property
    def location(self) -> str:
        """Where the bytes come from, for people (no credentials): a URL, a path, a host."""
        return self.spec.ref

    @property
    def size(self) -> int:
        """The blob's size as this source serves it (may cost a request)."""
        raise NotImplementedError

    def size_with_tail(self, tail: int) -> int:
        """`size`, from a probe that may bring the blob's last ``tail`` bytes along when the
        source can (the registry's does): opening a layer reads them next, one request less."""
        return self.size

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, length)`` range, in the order given; every range lies
        inside the blob and is returned whole, or an error is raised (a LazyLayerError)."""
        raise NotImplementedError

    def read_at(self, offset: int, size: int) -> bytes:
        """`shared.blobsource.BlobSource`: what the TOC readers call."""
        return self.read_ranges([(offset, size)])[0]

    def check(self) -> None:
        """Still reachable and still the same size: one cheap request (`check` jobs, every
        ``prefetch.check_interval`` while a layer is in use)."""
        if self.size != self.spec.size:
            raise RegistryError(f"layer {self.spec.digest}: {self.location} now serves {self.size} bytes, "
                                f"not {self.spec.size}")
        self.read_ranges([(0, 1)])

    def refresh(self) -> None:
        """Forget what was learnt about where the bytes are (redirects, tokens, connections)."""

    def download(self, out: BinaryIO, progress: Callable[[int], None] | None = None) -> int:
        """The whole blob into ``out``, hashed on the way; on a digest mismatch ``out`` is
        truncated back to where it started, so nothing unverified is kept."""
        start = out.tell()
        algorithm = self.spec.digest.partition(":")[0]
        hasher = hashlib.new(algorithm)
        size = self.spec.size
        try:
            for offset in range(0, size, DOWNLOAD_PIECE):
                piece = self.read_ranges([(offset, min(DOWNLOAD_PIECE, size - offset))])[0]
                hasher.update(piece)
                out.write(piece)
                if progress:
                    progress(len(piece))
            actual = f"{algorithm}:{hasher.hexdigest()}"
            if actual != self.spec.digest:
                raise DigestMismatchError(f"blob {self.spec.digest} from {self.location}", self.spec.digest, actual)
        except BaseException:
            out.seek(start)
            out.truncate()
            raise
        return size


@runtime_checkable
class SourceHandler(Protocol):
    """Makes sources for the layers it serves. Built once per worker process; its name is the
    built-in's or the entry point's."""

    def open(self, spec: LayerSpec) -> LayerSource | None:
        """A source for this layer, or None when this handler does not serve it (then the next
        handler in the order is asked). Should not touch the network: `size` is the probe."""
        ...


def check_ranges(ranges: list[tuple[int, int]], size: int, where: str) -> None:
    """Refuse ranges outside the blob before asking anyone for them."""
    for offset, length in ranges:
        if offset < 0 or length < 0 or offset + length > size:
            raise RegistryError(f"{where}: range {offset}+{length} is outside the {size}-byte blob")
