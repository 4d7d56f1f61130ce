"""The wire protocol between the front (ROUTER) and fetcher workers (DEALER), in one place.

Every message is one ZeroMQ multipart message: a **msgpack header frame** followed by zero or more
**raw payload frames**. Payloads (chunk bytes, blobs) never go through msgpack, so they are neither
copied into nor parsed out of the header; they travel as separate frames sent with ``copy=False``.
On the front's ROUTER socket the peer's routing id comes first; it is not part of this schema.

The header is a map with ``v`` (protocol version, :data:`PROTOCOL_VERSION`), ``t`` (message type)
and the fields of the message's dataclass below. A header with another version, an unknown type,
a missing field or a field of the wrong type is a :class:`ProtocolError`: peers never guess.

Examples (header as msgpack map, then payload frames)::

    READY       worker -> front   {"v": 1, "t": "ready", "pid": 4242, "capacity": 2,
                                   "heartbeat": 1.0, "kinds": ["fetch", "ping"]}
                Announces a worker and how many jobs it runs at once. Sent again with
                ``capacity: 0`` when the worker drains before exiting (SIGTERM).
    HEARTBEAT   both ways          {"v": 1, "t": "hb", "interval": 1.0}
                "I am alive; expect my next sign of life within ``interval`` seconds."
    REQUEST     front -> worker   {"v": 1, "t": "req", "id": 17, "kind": "fetch",
                                   "params": {"layer": "sha256:…", "chunks": [[0, 4194304]]},
                                   "timeout": 29.5}
                                   + payload frames (job input, often none)
    REPLY       worker -> front   {"v": 1, "t": "rep", "id": 17, "result": {"stored": 1}}
                                   + payload frames (job output bytes, often none)
    ERROR       worker -> front   {"v": 1, "t": "err", "id": 17, "kind": "registry",
                                   "message": "GET …: 503 Service Unavailable", "status": 503,
                                   "attrs": {"status": 503}}
                A typed failure of request 17; ``kind`` names a class of shared/errors.py.
    DISCONNECT  both ways          {"v": 1, "t": "bye", "reason": "draining done",
                                   "handback": [18, 19], "fatal": false}
                Worker -> front: "forget me; requests ``handback`` were not finished, give them to
                someone else". Front -> worker: "I do not know you, announce again" or, with
                ``fatal: true``, "go away" (e.g. protocol version mismatch).

Request ids are chosen by the front, unique per front process; a reply may arrive from any worker
and is matched by id alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence, Union

import msgpack

from lazylayer.shared import errors
from lazylayer.shared.errors import LazyLayerError, ProtocolError, WorkerError

PROTOCOL_VERSION = 1

# Anything ZeroMQ can send as a frame without copying (zmq.Frame implements the buffer protocol).
Buffer = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class Ready:
    pid: int
    capacity: int
    heartbeat: float
    kinds: list[str]
    TYPE: ClassVar[str] = "ready"


@dataclass(frozen=True)
class Heartbeat:
    interval: float
    TYPE: ClassVar[str] = "hb"


@dataclass(frozen=True)
class Request:
    id: int
    kind: str
    params: dict[str, Any]
    payloads: list[Buffer] = field(default_factory=list)
    #: seconds the front still waits for the answer (None: no limit); the worker's deadline
    timeout: float | None = None
    #: nobody waits on it now (prefetch, background fetch): the worker runs it at a low CPU share
    background: bool = False
    TYPE: ClassVar[str] = "req"


@dataclass(frozen=True)
class Reply:
    id: int
    result: dict[str, Any]
    payloads: list[Buffer] = field(default_factory=list)
    TYPE: ClassVar[str] = "rep"


@dataclass(frozen=True)
class ErrorReply:
    id: int
    kind: str
    message: str
    status: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    TYPE: ClassVar[str] = "err"

    @classmethod
    def from_exception(cls, request_id: int, exc: BaseException) -> ErrorReply:
        """Typed errors keep their kind and simple attributes; anything else becomes `worker`."""
        if isinstance(exc, LazyLayerError):
            attrs = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
            status = attrs.get("status")
            return cls(request_id, exc.kind, str(exc), status if isinstance(status, int) else None, attrs)
        return cls(request_id, WorkerError.kind, f"{type(exc).__name__}: {exc}")

    def to_exception(self) -> LazyLayerError:
        """The shared/errors.py class named by ``kind``, rebuilt without calling its __init__
        (constructors differ); unknown kinds become a WorkerError that names the kind."""
        cls = _ERROR_CLASSES.get(self.kind)
        if cls is None:
            return WorkerError(f"{self.kind}: {self.message}")
        exc = cls.__new__(cls)
        Exception.__init__(exc, self.message)
        exc.__dict__.update(self.attrs)
        return exc


@dataclass(frozen=True)
class Disconnect:
    reason: str
    handback: list[int] = field(default_factory=list)
    fatal: bool = False
    TYPE: ClassVar[str] = "bye"


Message = Union[Ready, Heartbeat, Request, Reply, ErrorReply, Disconnect]
_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (Ready, Heartbeat, Request, Reply, ErrorReply, Disconnect)}
_WITH_PAYLOADS = (Request, Reply)
# Resolved once: get_type_hints is far too slow to run per message.
_SCHEMA: dict[type, list[tuple[dataclasses.Field[Any], Any]]] = {
    cls: [(f, hints[f.name]) for f in dataclasses.fields(cls)]
    for cls, hints in ((cls, typing.get_type_hints(cls)) for cls in _TYPES.values())
}
_NAMES = {cls: {f.name for f, _ in schema} for cls, schema in _SCHEMA.items()}


def _error_classes() -> dict[str, type[LazyLayerError]]:
    found = {}
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, LazyLayerError):
            found[obj.kind] = obj
    return found


_ERROR_CLASSES = _error_classes()


def encode(message: Message) -> list[Buffer]:
    """Frames for ``message``: the msgpack header, then its payloads untouched."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": message.TYPE}
    for f in dataclasses.fields(message):
        if f.name != "payloads":
            header[f.name] = getattr(message, f.name)
    frames: list[Buffer] = [msgpack.packb(header, use_bin_type=True)]
    if isinstance(message, _WITH_PAYLOADS):
        frames.extend(message.payloads)
    return frames


def decode(frames: Sequence[Buffer]) -> Message:
    """Parse one message (without the ROUTER routing id); payloads come back as memoryviews
    of the received frames (no copy)."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = msgpack.unpackb(frames[0], raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"header is not msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    version = header.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, this process speaks {PROTOCOL_VERSION}")
    cls = _TYPES.get(header.pop("t", None))
    if cls is None:
        raise ProtocolError("unknown message type")
    schema = _SCHEMA[cls]
    if cls in _WITH_PAYLOADS:
        header["payloads"] = [memoryview(f) for f in frames[1:]]
    elif len(frames) > 1:
        raise ProtocolError(f"{cls.TYPE}: unexpected payload frames")
    unknown = header.keys() - _NAMES[cls]
    if unknown:
        raise ProtocolError(f"{cls.TYPE}: unknown fields {sorted(unknown)}")
    for f, hint in schema:
        if f.name not in header:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.TYPE}: missing field {f.name!r}")
        elif f.name != "payloads" and not _matches(header[f.name], hint):
            raise ProtocolError(f"{cls.TYPE}: field {f.name!r} has the wrong type")
    return cls(**header)


def _matches(value: Any, hint: Any) -> bool:
    """Shallow type check of a decoded header field against its annotation."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, hint)
