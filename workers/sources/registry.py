"""The registry as a blob source: today's `RegistryClient`, unchanged, behind `LayerSource`.

The handler keeps one client per registry/repository for the worker process (HTTP session,
tokens, blob locations), which manifest resolution uses too; `refresh` swaps in a new client
(no cached redirect URL, no tokens), leaving the old one to jobs still using it.
"""

from __future__ import annotations

import threading
from typing import BinaryIO, Callable

from lazylayer.shared.errors import RegistryError
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.ranges import ByteRange
from lazylayer.workers.registry.rangesupport import RangeSupport
from lazylayer.workers.registry.reference import Reference, parse_image_ref
from lazylayer.workers.sources.base import LayerSource, LayerSpec
from lazylayer.workers.wholeblob import WholeBody


class RegistryHandler:
    """Serves every layer of a registry reference (`oci:` refs are not its)."""

    def __init__(self, options: RegistryOptions, range_support: RangeSupport | None = None) -> None:
        self.options = options
        #: which mirrors serve ranges now: one view shared by every client of the worker
        self.range_support = range_support or RangeSupport()
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], RegistryClient] = {}

    def client(self, ref: Reference, fresh: bool = False) -> RegistryClient:
        key = (ref.registry, ref.repository)
        with self._lock:
            if fresh or key not in self._clients:
                # A replaced client is not closed: another job thread may still be using it.
                self._clients[key] = RegistryClient(self.options, range_support=self.range_support)
            return self._clients[key]

    def open(self, spec: LayerSpec) -> LayerSource | None:
        ref = parse_image_ref(spec.ref)
        return RegistrySource(self, ref, spec) if isinstance(ref, Reference) else None


class RegistrySource(LayerSource):
    def __init__(self, handler: RegistryHandler, ref: Reference, spec: LayerSpec) -> None:
        super().__init__(spec)
        self._handler = handler
        self.ref = ref
        self.client = handler.client(ref)

    @property
    def location(self) -> str:
        return self.ref.name

    @property
    def size(self) -> int:
        return self.client.blob_size(self.ref, self.spec.digest)

    def size_with_tail(self, tail: int) -> int:
        wanted = min(tail, self.spec.size)  # the manifest's size: the probe checks it is the blob's
        return self.client.blob_size(self.ref, self.spec.digest,
                                     ByteRange(self.spec.size - wanted, wanted) if wanted > 0 else None)

    def read_ranges(self, ranges: list[tuple[int, int]], whole_body: WholeBody | None = None) -> list[bytes]:
        """``whole_body``: what to do when the registry answers with the whole blob instead
        (workers/wholeblob.py: the fetcher keeps streaming it into the store)."""
        return self.client.read_ranges(self.ref, self.spec.digest, [ByteRange(o, n) for o, n in ranges],
                                       whole_body=whole_body)

    def refresh(self) -> None:
        self.client = self._handler.client(self.ref, fresh=True)

    def download(self, out: BinaryIO, progress: Callable[[int], None] | None = None) -> int:
        fetched = self.client.download_blob(self.ref, self.spec.digest, out, progress)
        if fetched != self.spec.size:
            raise RegistryError(f"layer {self.spec.digest}: the registry served {fetched} bytes, not {self.spec.size}")
        return fetched
