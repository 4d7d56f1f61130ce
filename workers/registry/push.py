"""Pushing to a registry: blobs (monolithic or chunked upload, or cross-repository mount),
manifests and indexes.

A blob the registry already has (HEAD 200) is not sent again; one in another repository of the
same registry can be mounted instead of uploaded. Uploads go to
the registry itself, never to a mirror, with a `pull,push` token.
"""

from __future__ import annotations

import logging
import os
from typing import BinaryIO
from urllib.parse import urljoin

from lazylayer.shared.errors import RegistryError
from lazylayer.workers.registry.client import Progress, RegistryClient, sha256_digest
from lazylayer.workers.registry.transport import safe_url
from lazylayer.workers.registry.hosts import Endpoint
from lazylayer.workers.registry.reference import Reference

log = logging.getLogger(__name__)

#: blobs larger than this are uploaded in PATCH chunks of this size unless told otherwise [bytes]
DEFAULT_CHUNK_SIZE = 64 << 20


def mount_blob(client: RegistryClient, ref: Reference, digest: str, from_repository: str) -> bool:
    """Ask the registry to link blob ``digest`` of ``from_repository`` into ``ref``'s repository.

    True when mounted; False when the registry declined (the upload it opened instead is
    cancelled), and the caller uploads the bytes.
    """
    response, endpoint = client.api("POST", ref, "blobs/uploads/", push=True, ok=(201, 202),
                                    params={"mount": digest, "from": from_repository},
                                    what=f"mount {digest} into {ref.name}")
    response.close()
    if response.status_code == 201:
        return True
    location = _location(response.url, response.headers.get("Location"), digest)
    client.send("DELETE", location, ref=ref, endpoint=endpoint, push=True).close()
    return False


def push_blob(client: RegistryClient, ref: Reference, digest: str, size: int, data: BinaryIO, *,
              chunk_size: int | None = DEFAULT_CHUNK_SIZE, progress: Progress | None = None) -> bool:
    """Upload ``size`` bytes of ``data`` (from its current position) as blob ``digest``.

    Returns False when the registry already had the blob, True when uploaded. ``chunk_size``
    None (or a blob no larger than it) means one monolithic PUT. The registry checks the digest
    itself and refuses a mismatch (surfaced as RegistryError).
    """
    if client.blob_exists(ref, digest, push=True):
        log.debug("blob %s already in %s", digest, ref.name)
        return False
    response, endpoint = client.api("POST", ref, "blobs/uploads/", push=True, ok=(202,),
                                    what=f"start upload of {digest} to {ref.name}")
    response.close()
    location = _location(response.url, response.headers.get("Location"), digest)
    start = data.tell()
    if chunk_size and size > chunk_size:
        location = _upload_chunks(client, ref, endpoint, location, data, size, chunk_size, progress)
        body: BinaryIO | bytes | None = None
    else:
        body = _Window(data, start, size)
    response = client.send("PUT", location, ref=ref, endpoint=endpoint, push=True, data=body,
                           params={"digest": digest},
                           headers={"Content-Type": "application/octet-stream", "Content-Length": str(0 if body is None else size)})
    if response.status_code != 201:
        raise client.error(response, f"upload of {digest} to {ref.name}")
    response.close()
    if progress and body is not None:
        progress(size)
    return True


def _upload_chunks(client: RegistryClient, ref: Reference, endpoint: Endpoint, location: str,
                   data: BinaryIO, size: int, chunk_size: int, progress: Progress | None) -> str:
    sent = 0
    while sent < size:
        piece = data.read(min(chunk_size, size - sent))
        if not piece:
            raise RegistryError(f"upload to {ref.name}: source ended after {sent} of {size} bytes")
        response = client.send("PATCH", location, ref=ref, endpoint=endpoint, push=True, data=piece, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{sent}-{sent + len(piece) - 1}", "Content-Length": str(len(piece)),
        })
        if response.status_code != 202:
            raise client.error(response, f"chunked upload to {ref.name} at byte {sent}")
        response.close()
        location = _location(response.url, response.headers.get("Location"), "chunk")
        sent += len(piece)
        if progress:
            progress(len(piece))
    return location


def push_manifest(client: RegistryClient, ref: Reference, body: bytes, media_type: str,
                  reference: str) -> str:
    """PUT a manifest or index under ``reference`` (a tag or its digest); returns its digest."""
    digest = sha256_digest(body)
    response, _ = client.api("PUT", ref, f"manifests/{reference}", push=True, ok=(201,), data=body,
                             headers={"Content-Type": media_type}, what=f"push manifest {ref.name}:{reference}")
    response.close()
    served = response.headers.get("Docker-Content-Digest")
    if served and served != digest:
        raise RegistryError(f"push manifest {ref.name}:{reference}: registry stored {served}, we sent {digest}")
    return digest


def _location(request_url: str, location: str | None, what: str) -> str:
    if not location:
        raise RegistryError(f"upload of {what} to {safe_url(request_url)}: no Location in the answer")
    return urljoin(request_url, location)


class _Window:
    """``size`` bytes of a file from ``start``, seekable so a retried PUT can resend them."""

    def __init__(self, data: BinaryIO, start: int, size: int) -> None:
        self._data, self._start, self._size, self._pos = data, start, size, 0

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self._pos = pos if whence == os.SEEK_SET else self._size + pos if whence == os.SEEK_END else self._pos + pos
        self._data.seek(self._start + self._pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        n = left if n < 0 else min(n, left)
        piece = self._data.read(n)
        self._pos += len(piece)
        return piece
