"""What a fetch job carries: typed parameters and the chunk records the front sends.

Everything here arrives over the wire from the front (or anyone who reaches the worker socket),
so each value is type-checked and each chunk's store key derived again, never taken as sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lazylayer.shared.errors import ProtocolError
from lazylayer.shared.estargz.toc import Chunk
from lazylayer.shared.store.chunks import chunk_key, unverified_key


@dataclass(frozen=True)
class WantedChunk:
    """One chunk a job must have in the store, as the front describes it on the wire:
    ``[blob_offset, blob_end, inner_offset, size, digest, data_key, chunk_offset]``."""

    blob_offset: int
    blob_end: int
    inner_offset: int
    size: int
    digest: str
    data_key: bytes
    chunk_offset: int = 0

    @classmethod
    def from_wire(cls, item: Any, layer_digest: str) -> "WantedChunk":
        try:
            blob_offset, blob_end, inner, size, digest, data_key, *rest = item
            chunk = cls(int(blob_offset), int(blob_end), int(inner), int(size), str(digest), bytes(data_key),
                        int(rest[0]) if rest else 0)
        except (TypeError, ValueError):
            raise ProtocolError(f"malformed chunk descriptor {item!r:.200}") from None
        if not 0 <= chunk.blob_offset < chunk.blob_end or chunk.inner_offset < 0 or chunk.size < 0:
            raise ProtocolError(f"impossible chunk descriptor {item!r:.200}")
        # The key is derived here, never trusted: a wrong key would file bytes under a digest.
        expected = (chunk_key(chunk.digest) if chunk.digest
                    else unverified_key(layer_digest, chunk.blob_offset, chunk.inner_offset))
        if chunk.data_key != expected:
            raise ProtocolError(f"chunk at blob offset {chunk.blob_offset}: data key does not match its digest")
        return chunk

    def toc_chunk(self) -> Chunk:
        return Chunk(self.chunk_offset, self.size, self.blob_offset, self.inner_offset, self.blob_end, self.digest)


def job_param(params: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    """A job parameter of the given type; absent or None gives ``default`` (required if none)."""
    value = params.get(name)
    if value is None:
        if default is ...:
            raise ProtocolError(f"job parameter {name!r} is missing")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"job parameter {name!r} must be {kind.__name__}")
    return value


def wanted_from_store(chunk: Any) -> WantedChunk:
    return WantedChunk(chunk.blob_offset, chunk.blob_end, chunk.inner_offset, chunk.size, chunk.digest,
                       chunk.data_key, chunk.chunk_offset)


def request_batches(chunks: list[WantedChunk], limit: int) -> list[list[WantedChunk]]:
    """Consecutive chunks (blob order) grouped so one group's compressed span stays near ``limit``."""
    batches: list[list[WantedChunk]] = []
    start = 0
    for chunk in chunks:
        if not batches or chunk.blob_end - start > limit:
            batches.append([])
            start = chunk.blob_offset
        batches[-1].append(chunk)
    return batches
