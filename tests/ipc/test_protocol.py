"""The wire schema: every message round-trips; anything else is a ProtocolError, never a guess."""

from __future__ import annotations

import msgpack
import pytest

from lazylayer.shared import protocol
from lazylayer.shared.errors import (AuthError, DigestMismatchError, LazyLayerError, ProtocolError,
                                     RegistryError, WorkerError)

MESSAGES = [
    protocol.Ready(pid=4242, capacity=2, heartbeat=1.0, kinds=["fetch", "ping"]),
    protocol.Heartbeat(interval=0.5),
    protocol.Request(17, "fetch", {"layer": "sha256:ab", "chunks": [[0, 4096]]}, [b"in", b""]),
    protocol.Reply(17, {"stored": 1}, [b"\x00" * 70_000]),
    protocol.ErrorReply(17, "registry", "503 from registry", 503, {"status": 503}),
    protocol.Disconnect("worker exiting", [18, 19]),
    protocol.Disconnect("protocol version 2", fatal=True),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.TYPE)
def test_round_trip(message):
    frames = protocol.encode(message)
    decoded = protocol.decode(frames)
    assert type(decoded) is type(message)
    if isinstance(message, (protocol.Request, protocol.Reply)):
        assert [bytes(p) for p in decoded.payloads] == [bytes(p) for p in message.payloads]
        assert len(frames) == 1 + len(message.payloads)
        assert frames[1:] == message.payloads  # payload frames are the caller's buffers, uncopied
        decoded = type(message)(**{**decoded.__dict__, "payloads": message.payloads})
    assert decoded == message


def _header(**fields):
    return [msgpack.packb({"v": protocol.PROTOCOL_VERSION, **fields})]


@pytest.mark.parametrize("frames, message", [
    ([], "empty message"),
    ([b"\xc1"], "not msgpack"),
    ([msgpack.packb([1, 2])], "not a map"),
    ([msgpack.packb({"v": 2, "t": "hb", "interval": 1.0})], "protocol version 2, this process speaks 1"),
    ([msgpack.packb({"t": "hb", "interval": 1.0})], "protocol version None"),
    (_header(t="nope"), "unknown message type"),
    (_header(t="hb"), "missing field 'interval'"),
    (_header(t="hb", interval="soon"), "'interval' has the wrong type"),
    (_header(t="ready", pid=1, capacity=True, heartbeat=1.0, kinds=[]), "'capacity' has the wrong type"),
    (_header(t="ready", pid=1, capacity=1, heartbeat=1.0, kinds=[3]), "'kinds' has the wrong type"),
    (_header(t="req", id=1, kind="x", params={}, extra=1), "unknown fields ['extra']"),
    (_header(t="hb", interval=1.0) + [b"payload"], "unexpected payload frames"),
])
def test_malformed_messages_are_refused(frames, message):
    with pytest.raises(ProtocolError) as excinfo:
        protocol.decode(frames)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("exc, cls, attrs", [
    (RegistryError("GET /v2/x: 503", status=503), RegistryError, {"status": 503}),
    (AuthError("no token", status=401), AuthError, {"status": 401}),
    (DigestMismatchError("chunk 3", "sha256:aa", "sha256:bb"), DigestMismatchError,
     {"what": "chunk 3", "expected": "sha256:aa", "actual": "sha256:bb"}),
    (LazyLayerError("plain"), LazyLayerError, {}),
])
def test_typed_errors_cross_the_wire(exc, cls, attrs):
    wire = protocol.decode(protocol.encode(protocol.ErrorReply.from_exception(9, exc)))
    rebuilt = wire.to_exception()
    assert type(rebuilt) is cls and str(rebuilt) == str(exc)
    assert {k: getattr(rebuilt, k) for k in attrs} == attrs
    assert wire.status == attrs.get("status")


def test_untyped_and_unknown_errors_become_worker_errors():
    bug = protocol.ErrorReply.from_exception(1, KeyError("layer"))
    assert (bug.kind, bug.message) == ("worker", "KeyError: 'layer'")
    future = protocol.ErrorReply(1, "from-a-newer-worker", "something new").to_exception()
    assert type(future) is WorkerError and str(future) == "from-a-newer-worker: something new"
