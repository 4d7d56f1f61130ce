"""Typed errors shared by every process.

Every failure a user can cause or meet (bad blob, wrong digest, registry trouble) is one of these,
so the CLI can print one clear line and the daemon can map it to an errno and record it for
`status`, instead of leaking a traceback. `kind` is the stable machine name used in protocol
error replies and `--json` output.
"""

from __future__ import annotations

import errno


class LazyLayerError(Exception):
    """Base of every error lazylayer raises on purpose."""

    kind = "error"
    errno = errno.EIO

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "message": str(self)}


class FormatError(LazyLayerError):
    """The blob or its TOC is not what the eStargz/stargz/zstd:chunked format allows."""

    kind = "format"


class NotEStargzError(FormatError):
    """No recognised footer: the blob is not eStargz, legacy stargz or stargz zstd:chunked."""

    kind = "not-estargz"


class TOCError(FormatError):
    """The TOC parsed but describes something invalid or hostile; the message names the entry."""

    kind = "toc"


class TOCLimitError(TOCError):
    """The TOC is larger, or has more entries, than the configured limit allows."""

    kind = "toc-limit"


class DigestMismatchError(LazyLayerError):
    """Bytes did not hash to the digest that vouches for them; nothing of them was used."""

    kind = "digest"

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class NotFoundError(LazyLayerError):
    """A path, layer, blob or manifest does not exist."""

    kind = "not-found"
    errno = errno.ENOENT


class RegistryError(LazyLayerError):
    """The registry answered with an error, or could not be reached."""

    kind = "registry"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "status": self.status}


class AuthError(RegistryError):
    """The registry refused our credentials (or we had none to offer)."""

    kind = "auth"
    errno = errno.EACCES


class PermissionDeniedError(LazyLayerError):
    """The caller may not do this (the daemon's sockets and store are root's)."""

    kind = "permission"
    errno = errno.EACCES


class ConfigError(LazyLayerError):
    """A config file, environment variable or flag has an unknown key or a wrong value."""

    kind = "config"
    errno = errno.EINVAL


class CacheError(LazyLayerError):
    """The LMDB cache could not be opened or written."""

    kind = "cache"


class CacheFullError(CacheError):
    """The cache filesystem refused a write (full, or failing): the bytes can still be served."""

    kind = "cache-full"


class CorruptCacheError(CacheError):
    """A record in the cache does not decode, or cached bytes no longer match their digest."""

    kind = "cache-corrupt"


class ProtocolError(LazyLayerError):
    """A ZeroMQ message between front and worker is malformed or speaks another protocol version."""

    kind = "protocol"


class WorkerError(LazyLayerError):
    """A worker could not run a job: unknown job kind, or the handler failed unexpectedly."""

    kind = "worker"


class WorkerLostError(WorkerError):
    """Every worker that tried the job died while running it (the attempt limit was reached)."""

    kind = "worker-lost"


class PoolUnavailableError(LazyLayerError):
    """No worker is connected, so the request could not be served within its timeout."""

    kind = "pool-unavailable"
    errno = errno.EAGAIN


class RequestTimeoutError(LazyLayerError):
    """Workers are connected but the request got no answer within its timeout."""

    kind = "timeout"
    errno = errno.ETIMEDOUT


class UnverifiedLayerError(LazyLayerError):
    """A layer has nothing that vouches for its TOC (no TOC digest annotation) and the config
    does not allow unverified layers."""

    kind = "unverified"
    errno = errno.EACCES


class MountError(LazyLayerError):
    """A FUSE or overlay mount could not be made or removed: /dev/fuse missing, the mountpoint
    busy or served by another daemon, mount(8)/umount(8) refused."""

    kind = "mount"
    errno = errno.EBUSY


class AlreadyExistsError(LazyLayerError):
    """A name is taken: a snapshot key or commit name that exists (containerd's ALREADY_EXISTS,
    which a remote snapshotter also answers when it committed the target snapshot itself)."""

    kind = "already-exists"
    errno = errno.EEXIST


class PreconditionError(LazyLayerError):
    """The request is well-formed but the object is in the wrong state: committing a committed
    snapshot, removing one that has children (containerd's FAILED_PRECONDITION)."""

    kind = "precondition"
    errno = errno.EBUSY
