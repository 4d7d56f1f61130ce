"""Image references: parse and normalise them the way docker and containerd do.

`ubuntu` means `docker.io/library/ubuntu:latest`; the first path component is a registry host
only when it looks like one (has a dot or a colon, is `localhost`, or is a bracketed IPv6
address). Normalising here, once, means every cache key, token scope and log line names the same
image the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lazylayer.shared.errors import LazyLayerError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
#: `oci:PATH[:TAG]` names an image in an OCI image layout directory instead of a registry
LAYOUT_PREFIX = "oci:"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(
    r"(?:\[[0-9a-fA-F:.]+(?:%[\w.-]+)?\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?::[0-9]+)?"
)


class ReferenceError(LazyLayerError):
    """The string is not a valid image reference."""

    kind = "reference"


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. ``digest`` wins over ``tag`` when both are given."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host (with port) the registry API is served from."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after `/manifests/`: the digest when known, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_tag(self, tag: str) -> "Reference":
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class LayoutRef:
    """`oci:PATH[:TAG]`: an image in an OCI image layout directory (workers/registry/layout.py).
    ``tag`` is the index entry's `org.opencontainers.image.ref.name` (None: the only image)."""

    path: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"{LAYOUT_PREFIX}{self.path}" + (f":{self.tag}" if self.tag else "")


def parse_layout_ref(text: str) -> LayoutRef:
    """Split `oci:PATH[:TAG]`: a last `:` starts the tag when what follows has no `/`."""
    if not text.startswith(LAYOUT_PREFIX) or len(text) == len(LAYOUT_PREFIX):
        raise ReferenceError(f"invalid layout reference {text!r}: expected oci:PATH[:TAG]")
    path, tag = text[len(LAYOUT_PREFIX):], None
    head, sep, tail = path.rpartition(":")
    if sep and head and "/" not in tail:
        path, tag = head, tail
        if not _TAG.fullmatch(tag):
            raise ReferenceError(f"invalid layout reference {text!r}: bad tag {tag!r}")
    return LayoutRef(path, tag)


def parse_image_ref(text: str) -> Reference | LayoutRef:
    """A registry reference, or `oci:PATH[:TAG]` for an image in a layout directory."""
    return parse_layout_ref(text) if text.startswith(LAYOUT_PREFIX) else parse_reference(text)


def parse_reference(text: str) -> Reference:
    """Parse ``[host[:port]/]path[:tag][@digest]``; a bare name gets `docker.io/library/` and `:latest`."""
    original = text
    if not text or text != text.strip():
        raise ReferenceError(f"invalid image reference {original!r}: empty or surrounded by spaces")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest) or (digest.startswith("sha256:") and not _SHA256.fullmatch(digest)):
            raise ReferenceError(f"invalid image reference {original!r}: bad digest {digest!r}")
    registry, remainder = _split_host(text)
    tag = None
    last = remainder.rsplit("/", 1)[-1]
    if ":" in last:
        remainder, tag = remainder.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise ReferenceError(f"invalid image reference {original!r}: bad tag {tag!r}")
    if registry is None:
        registry = DOCKER_HUB
    elif registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in remainder:
        remainder = f"library/{remainder}"
    components = remainder.split("/")
    if not remainder or not all(_COMPONENT.fullmatch(c) for c in components):
        raise ReferenceError(
            f"invalid image reference {original!r}: repository {remainder!r} must be lowercase "
            "path components of letters, digits and separators"
        )
    if len(registry) + 1 + len(remainder) > 255:
        raise ReferenceError(f"invalid image reference {original!r}: name longer than 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, remainder, tag, digest)


def _split_host(text: str) -> tuple[str | None, str]:
    """Split off the registry host if the first component is one (docker's rule)."""
    if text.startswith("["):  # IPv6 literal: the host ends at the bracket, maybe with a port
        end = text.find("]")
        slash = text.find("/", end)
        if end < 0 or slash < 0 or not _HOST.fullmatch(text[:slash]):
            raise ReferenceError(f"invalid image reference {text!r}: bad IPv6 registry host")
        return text[:slash], text[slash + 1 :]
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _HOST.fullmatch(first):
            raise ReferenceError(f"invalid image reference {text!r}: bad registry host {first!r}")
        return first, rest
    return None, text


def host_without_port(host: str) -> str:
    """`[::1]:5000` -> `::1`, `localhost:5000` -> `localhost`."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
