"""Image stores: a registry repository or an OCI layout directory, behind one interface.

Image-level convert and inspect only ever talk to an `ImageStore`, so every combination of
source and destination (ref -> ref, oci: -> ref, ref -> oci:, oci: -> oci:) is the same code.
`open_store("oci:PATH[:TAG]")` opens a layout; anything else is parsed as an image reference.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from lazylayer.shared.blobsource import BlobSource
from lazylayer.workers.registry.blobsource import RegistryBlobSource
from lazylayer.workers.registry.client import MAX_DOCUMENT_SIZE, Progress, RegistryClient, sha256_digest
from lazylayer.workers.registry.layout import OCILayout
from lazylayer.workers.registry.manifests import Manifest, Platform, get_manifest_bytes, parse_document, pick_manifest
from lazylayer.workers.registry.push import mount_blob, push_blob, push_manifest
from lazylayer.workers.registry.reference import LAYOUT_PREFIX, Reference, parse_layout_ref, parse_reference


class ImageStore(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tag(self) -> str | None: ...

    def resolve(self) -> tuple[bytes, str | None, str]:
        """The top-level manifest or index: (bytes, media type, digest), digest checked."""
        ...

    def document(self, digest: str) -> bytes: ...

    def blob_bytes(self, digest: str, limit: int = ...) -> bytes: ...

    def blob_source(self, digest: str, size: int | None = None) -> BlobSource: ...

    def download(self, digest: str, out: BinaryIO, progress: Progress | None = None) -> int: ...

    def has_blob(self, digest: str) -> bool: ...

    def put_blob(self, digest: str, size: int, data: BinaryIO, *, progress: Progress | None = None) -> bool: ...

    def put_document(self, raw: bytes, media_type: str, tag: str | None, platform: dict | None = None) -> str: ...


class RegistryStore:
    """A repository in a registry; ``ref``'s tag or digest names the image."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref

    @property
    def name(self) -> str:
        return str(self.ref)

    @property
    def tag(self) -> str | None:
        return self.ref.tag

    def resolve(self) -> tuple[bytes, str | None, str]:
        return get_manifest_bytes(self.client, self.ref)

    def document(self, digest: str) -> bytes:
        return get_manifest_bytes(self.client, self.ref.with_digest(digest))[0]

    def blob_bytes(self, digest: str, limit: int = MAX_DOCUMENT_SIZE) -> bytes:
        body, _ = self.client.get_document(self.ref, f"blobs/{digest}", None,
                                           f"blob {digest} of {self.ref.name}", digest)
        return body

    def blob_source(self, digest: str, size: int | None = None) -> RegistryBlobSource:
        return RegistryBlobSource(self.client, self.ref, digest, size)

    def download(self, digest: str, out: BinaryIO, progress: Progress | None = None) -> int:
        return self.client.download_blob(self.ref, digest, out, progress)

    def has_blob(self, digest: str) -> bool:
        """Asked of a destination, so of the registry itself: a mirror (a pull-through cache)
        answers HEAD of a blob it lacks by fetching it from the origin."""
        return self.client.blob_exists(self.ref, digest, push=True)

    def put_blob(self, digest: str, size: int, data: BinaryIO, *, progress: Progress | None = None) -> bool:
        return push_blob(self.client, self.ref, digest, size, data, progress=progress)

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        return mount_blob(self.client, self.ref, digest, from_repository)

    def put_document(self, raw: bytes, media_type: str, tag: str | None, platform: dict | None = None) -> str:
        return push_manifest(self.client, self.ref, raw, media_type, tag or sha256_digest(raw))


def open_store(spec: str, client: RegistryClient, *, create: bool = False) -> ImageStore:
    """`oci:PATH[:TAG]` (``create``: make the layout if missing) or an image reference."""
    if spec.startswith(LAYOUT_PREFIX):
        layout = parse_layout_ref(spec)
        return OCILayout(layout.path, layout.tag, create=create)
    return RegistryStore(client, parse_reference(spec))


def resolve_image_manifest(store: ImageStore, wanted: Platform | None = None) -> Manifest:
    """The image manifest ``store``'s image names, chosen from an index by ``wanted`` (default:
    this machine's platform)."""
    return pick_manifest(parse_document(*store.resolve()), wanted,
                         lambda d: parse_document(store.document(d.digest), d.media_type, d.digest))
