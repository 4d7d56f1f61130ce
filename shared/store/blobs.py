"""Whole compressed blobs kept beside the LMDB environment, for the layer store's `blob` file.

Chunks live in LMDB decompressed; a reader of `blob` wants the original compressed bytes, which
can only be verified whole (the blob digest). So a worker streams the whole blob into
``CACHE/blobs/`` under a temporary name and renames it into place only when its digest matched:
a file there is always the verified blob. The front reads it and removes it when the layer is
closed, so blobs do not outlive the layers that exposed them.
"""

from __future__ import annotations

import os
import re

from lazylayer.shared.errors import ProtocolError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def blob_path(cache_dir: str, digest: str) -> str:
    """The digest becomes a file name, so anything but a well-formed digest is refused."""
    if not _DIGEST.fullmatch(digest):
        raise ProtocolError(f"{digest!r} is not a sha256/sha512 digest")
    algorithm, _, hexdigest = digest.partition(":")
    return os.path.join(cache_dir, "blobs", f"{algorithm}-{hexdigest}")


def remove_blob(cache_dir: str, digest: str) -> None:
    try:
        os.unlink(blob_path(cache_dir, digest))
    except (FileNotFoundError, ProtocolError):
        pass
