"""Image manifests and indexes: media types, parsing, platform choice, verified fetching.

Both the OCI and the Docker schema 2 flavours are read (manifest, and index / manifest list).
The raw bytes are kept next to the parsed form because digests are over the bytes as served; a
manifest we rewrite is serialised anew and gets a new digest.
"""

from __future__ import annotations

import json
import platform as host
from dataclasses import dataclass, field
from typing import Any, Callable

from lazylayer.shared.errors import FormatError, NotFoundError
from lazylayer.shared.estargz.fields import INT64_MAX, ascii_uint
from lazylayer.shared.estargz.toc import check_digest
from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazylayer.workers.registry.client import RegistryClient, sha256_digest
from lazylayer.workers.registry.reference import Reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: layers we can read and convert: plain, gzip and zstd tars (incl. non-distributable OCI ones)
TAR_LAYER_TYPES = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)

_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                 "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
                 "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))

    def matches(self, other: "Platform") -> bool:
        """``other`` (from an index) runs here; an unspecified variant matches the default one."""
        return (self.os == other.os and self.architecture == other.architecture
                and _variant(self) == _variant(other))


def _variant(p: Platform) -> str:
    if p.variant:
        return p.variant
    return {"arm64": "v8", "arm": "v7"}.get(p.architecture, "")


def parse_platform(text: str) -> Platform:
    """`linux/arm64/v8`, `linux/amd64`, or just `arm64` (os linux)."""
    parts = text.strip().lower().split("/")
    if len(parts) == 1 and parts[0]:
        return Platform("linux", _MACHINE_ARCH.get(parts[0], parts[0]))
    if len(parts) in (2, 3) and all(parts):
        return Platform(parts[0], _MACHINE_ARCH.get(parts[1], parts[1]), parts[2] if len(parts) == 3 else "")
    raise FormatError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")


def host_platform() -> Platform:
    machine = host.machine().lower()
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
    return Platform(host.system().lower() or "linux", _MACHINE_ARCH.get(machine, machine), variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    #: fields we do not model (urls, artifactType, platform os.version, ...) kept so a rewrite loses nothing
    extra: dict[str, Any] = field(default_factory=dict)
    platform_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def urls(self) -> tuple[str, ...]:
        """Where else the blob may be fetched (OCI non-distributable / Docker foreign layers)."""
        urls = self.extra.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise FormatError(f"descriptor {self.digest}: urls is not a list of strings")
        return tuple(urls)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        out.update(self.extra)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
            out["platform"].update(self.platform_extra)
        return out


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    raw: bytes
    digest: str
    #: the whole parsed document, so fields we do not model survive a rewrite
    document: dict[str, Any] = field(default_factory=dict)


@dataclass
class Index:
    media_type: str
    manifests: list[Descriptor]
    raw: bytes
    digest: str
    document: dict[str, Any] = field(default_factory=dict)

    def select(self, wanted: Platform) -> Descriptor:
        for descriptor in self.manifests:
            if descriptor.platform is not None and wanted.matches(descriptor.platform):
                return descriptor
        available = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise NotFoundError(f"no manifest for platform {wanted} in the index (available: {available})")


def parse_document(raw: bytes, media_type: str | None, digest: str) -> Manifest | Index:
    """Parse manifest or index bytes; the document's own mediaType wins over the header's."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FormatError(f"manifest {digest} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"manifest {digest} is not a JSON object")
    kind = doc.get("mediaType") or (media_type or "").split(";")[0].strip()
    if not kind:
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if doc.get("schemaVersion") != 2:
        raise FormatError(f"manifest {digest}: schemaVersion {doc.get('schemaVersion')!r} is not supported (need 2)")
    if kind in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise FormatError(f"index {digest} has no manifests list")
        return Index(kind, [_descriptor(e, digest) for e in entries], raw, digest, doc)
    if kind in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list) or not isinstance(doc.get("config"), dict):
            raise FormatError(f"manifest {digest} lacks config or layers")
        return Manifest(kind, _descriptor(doc["config"], digest), [_descriptor(l, digest) for l in layers],
                        raw, digest, doc)
    raise FormatError(f"manifest {digest} has unsupported media type {kind!r}")


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise FormatError(f"manifest {where}: a descriptor is not an object")
    try:
        media_type, digest, size = str(obj["mediaType"]), str(obj["digest"]), obj["size"]
    except KeyError as exc:
        raise FormatError(f"manifest {where}: a descriptor lacks {exc.args[0]!r}") from None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= INT64_MAX or ":" not in digest:
        raise FormatError(f"manifest {where}: descriptor {digest!r} has a bad size or digest")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise FormatError(f"manifest {where}: descriptor {digest} has malformed annotations")
    _check_annotations(annotations, f"manifest {where}: descriptor {digest}")
    platform, platform_extra = None, {}
    extra = {k: v for k, v in obj.items() if k not in ("mediaType", "digest", "size", "annotations", "platform")}
    if isinstance(obj.get("platform"), dict):
        p = obj["platform"]
        platform = Platform(str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", "")))
        platform_extra = {k: v for k, v in p.items() if k not in ("os", "architecture", "variant")}
    return Descriptor(media_type, digest, size, dict(annotations), platform, extra, platform_extra)


def _check_annotations(annotations: dict[str, str], where: str) -> None:
    """The annotations we act on are checked here, where they enter: the front turns the
    uncompressed size into a number and the TOC digest into a comparison."""
    size = annotations.get(UNCOMPRESSED_SIZE_ANNOTATION)
    if size is not None and ascii_uint(size) is None:
        raise FormatError(f"{where}: annotation {UNCOMPRESSED_SIZE_ANNOTATION} is {size!r}, "
                          "not a byte count in ASCII digits")
    toc_digest = annotations.get(TOC_DIGEST_ANNOTATION)
    if toc_digest is not None:
        check_digest(toc_digest, f"{where}: annotation {TOC_DIGEST_ANNOTATION}")  # a FormatError


def get_manifest_bytes(client: RegistryClient, ref: Reference) -> tuple[bytes, str | None, str]:
    """(bytes, Content-Type, digest) of the manifest or index ``ref`` names. The bytes are checked
    against the ref's digest when it has one, and against the registry's Docker-Content-Digest."""
    body, response = client.get_document(ref, f"manifests/{ref.reference}", ACCEPT,
                                         f"manifest {ref}", ref.digest)
    return body, response.headers.get("Content-Type"), ref.digest or sha256_digest(body)


def fetch_document(client: RegistryClient, ref: Reference) -> Manifest | Index:
    return parse_document(*get_manifest_bytes(client, ref))


def resolve_manifest(client: RegistryClient, ref: Reference,
                     wanted: Platform | None = None) -> tuple[Manifest, Index | None]:
    """The image manifest for ``ref`` on ``wanted`` (default: this machine), and the index it
    was chosen from, if any. The chosen descriptor's digest is checked against the bytes."""
    top = fetch_document(client, ref)
    chosen = pick_manifest(top, wanted, lambda d: fetch_document(client, ref.with_digest(d.digest)))
    return chosen, None if isinstance(top, Manifest) else top


def pick_manifest(top: Manifest | Index, wanted: Platform | None,
                  fetch: Callable[[Descriptor], Manifest | Index]) -> Manifest:
    """``top`` itself when it is a manifest, else the one its index lists for ``wanted``
    (default: this machine), fetched with ``fetch`` (which checks the descriptor's digest)."""
    if isinstance(top, Manifest):
        return top
    descriptor = top.select(wanted or host_platform())
    chosen = fetch(descriptor)
    if not isinstance(chosen, Manifest):
        raise FormatError(f"index {top.digest} points at {descriptor.digest}, which is not an image manifest")
    return chosen


def fetch_config(client: RegistryClient, ref: Reference, manifest: Manifest) -> tuple[bytes, dict[str, Any]]:
    """The image config blob (digest checked) and its parsed JSON."""
    what = f"config {manifest.config.digest} of {ref.name}"
    body, _ = client.get_document(ref, f"blobs/{manifest.config.digest}", None, what, manifest.config.digest)
    try:
        config = json.loads(body)
    except ValueError:
        raise FormatError(f"{what} is not JSON") from None
    if not isinstance(config, dict):
        raise FormatError(f"{what} is not a JSON object")
    return body, config
