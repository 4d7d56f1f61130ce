"""Decompressors: which chunked layer formats lazylayer can read, and a registry in front of them.

A decompressor claims a layer by its descriptor's media type and/or the blob's tail (where every
seekable format keeps its footer), reads its TOC into a `TOCStream`, and turns one chunk's
compressed bytes into its verified uncompressed bytes. Built in: ``gzip`` (eStargz and legacy
stargz) and ``zstd`` (zstd:chunked), thin wrappers of reader.py; more come from the
``lazylayer.decompressors`` entry point group (shared/plugins.py), so a new chunked format is a
plug-in, not a fork (upstream: the additionalDecompressors of fs/layer's NewResolver).

Why it is shaped like this:
- **One tail read.** Opening a layer reads the blob's last ``TAIL_READ_SIZE`` bytes once; every
  decompressor's `claims` looks at the same bytes, and the chosen one's `open_toc` is served them
  from memory (`_TailCached`), so the dispatch costs no request.
- **The chunk check is ours, not the plug-in's.** Whatever a plug-in's `decompress_chunk`
  returns is hashed here against the TOC's chunk digest before anyone stores it; the built-ins
  check inside reader.decompress_chunk already.
- **Recorded, not sniffed.** The chosen decompressor's name is kept on the layer record, so every
  worker decodes a layer's chunks the same way; records made before it was kept (name "") fall
  back to sniffing the gzip/zstd magic of each chunk, as lazylayer always did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lazylayer.shared import plugins
from lazylayer.shared.blobsource import BlobSource
from lazylayer.shared.errors import ConfigError, DigestMismatchError, FormatError, NotEStargzError
from lazylayer.shared.estargz import reader
from lazylayer.shared.estargz.footer import MAX_FOOTER_SIZE, FooterKind, parse_footer
from lazylayer.shared.estargz.toc import Chunk, TOCLimits
from lazylayer.shared.estargz.tocstream import TOCStream

#: Bytes at the end of the blob every decompressor's `claims` sees (footer, usually the TOC too).
TAIL_SIZE = max(reader.TAIL_READ_SIZE, MAX_FOOTER_SIZE)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"


@runtime_checkable
class Decompressor(Protocol):
    """A chunked layer format. Its name (built-in, or its entry point's) is what config, the
    layer record and `status` call it."""

    def claims(self, media_type: str, tail: bytes, blob_size: int) -> bool:
        """Whether this format reads the layer: ``tail`` is the blob's last bytes (up to TAIL_SIZE)."""
        ...

    def open_toc(self, source: BlobSource, *, toc_digest: str | None, limits: TOCLimits) -> TOCStream:
        """The layer's TOC as a stream of eStargz TOC JSON (`TOCStream.of(toc)` for a format that
        builds the model itself); with ``toc_digest`` the stream must end in DigestMismatchError
        when the TOC does not hash to it (TOCStream does that given ``expect_digest``)."""
        ...

    def toc_digest_of(self, source: BlobSource, limits: TOCLimits) -> str:
        """What the descriptor's TOC digest annotation must say for this blob."""
        ...

    def decompress_chunk(self, compressed: bytes | memoryview, chunk: Chunk, *, allow_unverified: bool) -> bytes:
        """The chunk's ``size`` uncompressed bytes from the blob bytes ``[blob_offset, blob_end)``.
        FormatError for undecodable data."""
        ...


@dataclass(frozen=True)
class FooterFormat:
    """A built-in format: claimed by its footer kinds (the media type says gzip for eStargz and
    legacy stargz alike, and zstd:chunked layers are also plain `tar+zstd`); reader.py does the rest."""

    name: str
    kinds: frozenset[FooterKind]

    def claims(self, media_type: str, tail: bytes, blob_size: int) -> bool:
        try:
            return parse_footer(tail, blob_size).kind in self.kinds
        except NotEStargzError:
            return False

    def open_toc(self, source: BlobSource, *, toc_digest: str | None, limits: TOCLimits) -> TOCStream:
        return reader.open_toc(source, toc_digest=toc_digest, limits=limits)[1]

    def toc_digest_of(self, source: BlobSource, limits: TOCLimits) -> str:
        return reader.toc_digest_of(source, limits)

    def decompress_chunk(self, compressed: bytes | memoryview, chunk: Chunk, *, allow_unverified: bool) -> bytes:
        return reader.decompress_chunk(self.name, compressed, chunk, allow_unverified=allow_unverified)


GZIP = FooterFormat("gzip", frozenset({FooterKind.ESTARGZ, FooterKind.LEGACY}))
ZSTD = FooterFormat("zstd", frozenset({FooterKind.ZSTD_CHUNKED}))
BUILTIN: dict[str, Decompressor] = {GZIP.name: GZIP, ZSTD.name: ZSTD}


class _TailCached:
    """A source whose last bytes were read already: reads inside them are served from memory."""

    def __init__(self, source: BlobSource, tail: bytes) -> None:
        self._source = source
        self.tail = tail
        self._start = source.size - len(tail)

    @property
    def size(self) -> int:
        return self._source.size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset >= self._start and offset + size <= self._start + len(self.tail):
            return self.tail[offset - self._start : offset - self._start + size]
        return self._source.read_at(offset, size)


class Decompressors:
    """The decompressors of this process, in the order they are asked to claim a layer."""

    def __init__(self, chain: dict[str, Decompressor]) -> None:
        self.chain = dict(chain)

    @classmethod
    def load(cls, order: tuple[str, ...] = ()) -> "Decompressors":
        """``order`` (config `decompressors.order`): the names to use, in claim order; empty
        means the built-ins, then every installed plug-in by name."""
        installed = (plugins.check_names("decompressors.order", order, BUILTIN, plugins.DECOMPRESSORS_GROUP)
                     if order else plugins.installed(plugins.DECOMPRESSORS_GROUP))
        chain: dict[str, Decompressor] = {}
        for name in order or (*BUILTIN, *(n for n in installed if n not in BUILTIN)):
            made = BUILTIN.get(name) or plugins.make(installed[name])
            if not isinstance(made, Decompressor):
                raise ConfigError(f"decompressor plug-in {name!r} lacks claims/open_toc/toc_digest_of/"
                                  "decompress_chunk")
            chain[name] = made
        return cls(chain)

    def get(self, name: str) -> Decompressor:
        try:
            return self.chain[name]
        except KeyError:
            raise FormatError(f"the layer was registered with decompressor {name!r}, which this process does "
                              f"not have (has: {', '.join(self.chain)})") from None

    def choose(self, media_type: str, tail: bytes, blob_size: int) -> str:
        """The name of the first decompressor that claims the layer."""
        for name, decompressor in self.chain.items():
            if decompressor.claims(media_type, tail, blob_size):
                return name
        raise NotEStargzError(
            f"no decompressor ({', '.join(self.chain)}) reads this {media_type or 'untyped'} layer: "
            f"no recognised footer in the last {len(tail)} bytes of a {blob_size}-byte blob "
            f"(ends with {tail[-8:].hex() or 'nothing'})")

    def open_toc(self, source: BlobSource, media_type: str, *, toc_digest: str | None,
                 limits: TOCLimits) -> tuple[str, TOCStream]:
        """The name of the decompressor that claims the layer and its TOC stream; one tail read
        for both."""
        name, cached = self.claim(source, media_type)
        return name, self.chain[name].open_toc(cached, toc_digest=toc_digest, limits=limits)

    def toc_digest_of(self, source: BlobSource, media_type: str, limits: TOCLimits) -> str:
        name, cached = self.claim(source, media_type)
        return self.chain[name].toc_digest_of(cached, limits)

    def claim(self, source: BlobSource, media_type: str) -> tuple[str, BlobSource]:
        """The name of the decompressor that claims the layer, and ``source`` with its tail
        read (reads inside the tail then cost nothing)."""
        size = source.size
        start = max(0, size - TAIL_SIZE)
        cached = _TailCached(source, source.read_at(start, size - start))
        return self.choose(media_type, cached.tail, size), cached

    @property
    def plugins(self) -> list[str]:
        return [name for name, decompressor in self.chain.items() if BUILTIN.get(name) is not decompressor]

    def decompress_chunk(self, name: str, compressed: bytes | memoryview, chunk: Chunk, *,
                         allow_unverified: bool) -> bytes:
        """One chunk, verified, by the decompressor ``name`` the layer was registered with ("":
        the gzip/zstd magic at the chunk's start decides)."""
        name = name or _sniff(compressed)
        decompressor = self.chain.get(name) or BUILTIN.get(name) or self.get(name)
        payload = decompressor.decompress_chunk(compressed, chunk, allow_unverified=allow_unverified)
        if decompressor is not BUILTIN.get(name):
            _check_plugin_output(name, payload, chunk, allow_unverified)
        return payload


def _sniff(data: bytes | memoryview) -> str:
    """Chunk ranges start at a gzip member or a zstd frame: the magic says which."""
    head = bytes(data[:4])
    if head.startswith(_ZSTD_MAGIC):
        return ZSTD.name
    if head.startswith(_GZIP_MAGIC):
        return GZIP.name
    raise FormatError("compressed chunk data starts with neither a gzip member nor a zstd frame")


def _check_plugin_output(name: str, payload: bytes, chunk: Chunk, allow_unverified: bool) -> None:
    what = f"{chunk.path or 'chunk'} at file offset {chunk.chunk_offset} (decompressor {name})"
    if len(payload) != chunk.size:
        raise FormatError(f"{what}: decoded to {len(payload)} bytes, the TOC says {chunk.size}")
    if not chunk.digest:
        if not allow_unverified:
            raise FormatError(f"{what} has no digest; refusing to return unverified bytes")
        return
    actual = "sha256:" + hashlib.sha256(payload).hexdigest()
    if actual != chunk.digest:
        raise DigestMismatchError(what, chunk.digest, actual)
