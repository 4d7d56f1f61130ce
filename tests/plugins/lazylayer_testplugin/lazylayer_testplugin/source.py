"""`testdir`: layers served from a plain directory of blobs named by their hex digest.

The directory is ``$LLTESTPLUGIN_DIR`` (a plug-in gets lazylayer's Config; its own settings come
from wherever the site likes). Every read is appended to ``reads.log`` there, so a test can tell
the bytes came through the plug-in.
"""

from __future__ import annotations

import os
import threading

from lazylayer.shared.config import Config
from lazylayer.shared.errors import NotFoundError
from lazylayer.workers.sources.base import LayerSource, LayerSpec, check_ranges

ENV = "LLTESTPLUGIN_DIR"


class DirHandler:
    def __init__(self, config: Config) -> None:
        self.root = os.environ.get(ENV, "")

    def open(self, spec: LayerSpec) -> LayerSource | None:
        path = os.path.join(self.root, spec.digest.partition(":")[2])
        return DirSource(spec, path) if self.root and os.path.isfile(path) else None


class DirSource(LayerSource):
    def __init__(self, spec: LayerSpec, path: str) -> None:
        super().__init__(spec)
        self.path = path
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return self.path

    @property
    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            raise NotFoundError(f"{self.path}: no such blob") from None

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        check_ranges(ranges, self.size, self.path)
        with open(self.path, "rb") as f:
            out = [os.pread(f.fileno(), length, offset) for offset, length in ranges]
        with self._lock, open(os.path.join(os.path.dirname(self.path), "reads.log"), "a") as log:
            log.writelines(f"{offset} {length}\n" for offset, length in ranges)
        return out
