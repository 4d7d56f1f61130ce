"""OCI image layout directories as a blob source: `oci:/path[:tag]` refs, no registry.

A layer is served from `PATH/blobs/<alg>/<hex>` when the file is there (a non-distributable
layer a layout left out is the ``urls`` handler's). The ref's path must be absolute: workers
do not share the user's working directory (`lazylayer mount` makes it absolute).
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO, Callable

from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.errors import NotFoundError
from lazylayer.workers.registry.layout import OCILayout
from lazylayer.workers.registry.reference import LayoutRef, ReferenceError, parse_image_ref
from lazylayer.workers.sources.base import LayerSource, LayerSpec, check_ranges


def open_layout(ref: LayoutRef) -> OCILayout:
    if not os.path.isabs(ref.path):
        raise ReferenceError(f"{ref}: the daemon needs an absolute layout path")
    return OCILayout(ref.path, ref.tag)


class LayoutHandler:
    def open(self, spec: LayerSpec) -> LayerSource | None:
        ref = parse_image_ref(spec.ref)
        if not isinstance(ref, LayoutRef):
            return None
        layout = open_layout(ref)
        return LayoutSource(layout, spec) if layout.has_blob(spec.digest) else None


class LayoutSource(LayerSource):
    def __init__(self, layout: OCILayout, spec: LayerSpec) -> None:
        super().__init__(spec)
        self.layout = layout
        self._lock = threading.Lock()
        self._file: FileSource | None = None

    @property
    def location(self) -> str:
        return str(self.layout.blob_path(self.spec.digest))

    def _open(self) -> FileSource:
        with self._lock:
            if self._file is None:
                self._file = FileSource(self.location)
            return self._file

    @property
    def size(self) -> int:
        return self._open().size

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        blob = self._open()
        check_ranges(ranges, blob.size, self.location)
        return [blob.read_at(offset, length) for offset, length in ranges]

    def refresh(self) -> None:
        """Reopen the file: the layout may have been rewritten (blobs replaced by rename)."""
        with self._lock:
            self._file = None  # not closed: a job thread may still be reading through it
        if not self.layout.has_blob(self.spec.digest):
            raise NotFoundError(f"{self.layout.name}: blob {self.spec.digest} is missing")

    def download(self, out: BinaryIO, progress: Callable[[int], None] | None = None) -> int:
        return self.layout.download(self.spec.digest, out, progress)
