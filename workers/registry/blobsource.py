"""A registry blob as a `BlobSource`, so the format reader works on remote blobs unchanged."""

from __future__ import annotations

from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.ranges import ByteRange
from lazylayer.workers.registry.reference import Reference


class RegistryBlobSource:
    """Random access to one blob of ``ref``'s repository through ranged GETs.

    ``size`` comes from the layer descriptor when known (no request needed), else from the
    registry. Bytes are as the registry sent them: the reader's chunk and TOC digests, or
    `RegistryClient.download_blob`, are what verify them.
    """

    def __init__(self, client: RegistryClient, ref: Reference, digest: str, size: int | None = None) -> None:
        self.client = client
        self.ref = ref
        self.digest = digest
        self._size = size

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = self.client.blob_size(self.ref, self.digest)
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        return self.client.read_ranges(self.ref, self.digest, [ByteRange(offset, size)])[0]

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several ``(offset, size)`` ranges in as few requests as the registry allows."""
        return self.client.read_ranges(self.ref, self.digest, [ByteRange(o, s) for o, s in ranges])
