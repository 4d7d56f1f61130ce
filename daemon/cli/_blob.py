"""Opening what the read-only commands (inspect, verify, cat) are pointed at.

Today that is a local blob file. Another kind of source (an image reference read from a
registry) is added here, so every read command gains it at once.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.estargz.reader import BlobReader


@contextmanager
def open_blob(spec: str, *, toc_digest: str | None = None) -> Iterator[BlobReader]:
    """A reader over the blob ``spec`` names, closed on exit."""
    with FileSource(spec) as source:
        yield BlobReader.open(source, toc_digest=toc_digest)
