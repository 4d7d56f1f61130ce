"""The worker process seen from a bare ROUTER: the test plays the front, message by message."""

from __future__ import annotations

import subprocess
from typing import Iterator

import msgpack
import pytest
import trio
import zmq

from lazylayer.shared import protocol
from tests.ipc.harness import DEADLINE, HEARTBEAT, REPO, make_pool, trio_test, worker_command


class FakeFront:
    """A blocking ROUTER; every receive is bounded so a missing message fails the test."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, int(DEADLINE * 1000))
        self.socket.bind(endpoint)

    def receive(self) -> tuple[bytes, protocol.Message]:
        identity, *frames = self.socket.recv_multipart()
        return identity, protocol.decode(frames)

    def receive_type(self, cls: type) -> tuple[bytes, protocol.Message]:
        while True:
            identity, message = self.receive()
            if isinstance(message, cls):
                return identity, message

    def send(self, identity: bytes, message: protocol.Message) -> None:
        self.socket.send_multipart([identity, *protocol.encode(message)])

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def front(endpoint: str) -> Iterator[FakeFront]:
    fake = FakeFront(endpoint)
    yield fake
    fake.close()


@pytest.fixture
def worker(endpoint: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(worker_command(endpoint, capacity=3), cwd=REPO)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_announces_itself_and_answers_jobs(front, worker):
    identity, ready = front.receive_type(protocol.Ready)
    assert (ready.pid, ready.capacity, ready.heartbeat) == (worker.pid, 3, HEARTBEAT)
    assert {"ping", "echo", "gate", "fail", "crash"} <= set(ready.kinds)
    assert identity.startswith(f"w{worker.pid}.".encode())
    front.send(identity, protocol.Request(1, "echo", {"a": 1}, [b"x" * 100_000]))
    _, reply = front.receive_type(protocol.Reply)
    assert (reply.id, reply.result["params"], [bytes(p) for p in reply.payloads]) == (1, {"a": 1}, [b"x" * 100_000])
    front.send(identity, protocol.Request(2, "no-such-job", {}))
    _, error = front.receive_type(protocol.ErrorReply)
    assert (error.id, error.kind, error.message) == (2, "worker", "unknown job kind 'no-such-job'")
    # Garbage from the front is logged and ignored; the worker keeps serving.
    front.socket.send_multipart([identity, b"\xc1garbage"])
    front.send(identity, protocol.Request(3, "ping", {}))
    _, reply = front.receive_type(protocol.Reply)
    assert (reply.id, reply.result) == (3, {"pid": worker.pid})


def test_heartbeats_and_reconnects_when_the_front_goes_silent(front, worker):
    first, _ = front.receive_type(protocol.Ready)
    identity, beat = front.receive_type(protocol.Heartbeat)
    assert identity == first and beat.interval == HEARTBEAT
    # The fake front never answers: after 3 silent beats the worker makes a new socket (new
    # routing id) and announces itself again.
    second, ready = front.receive_type(protocol.Ready)
    assert second != first and ready.pid == worker.pid


def test_announces_again_when_the_front_does_not_know_it(front, worker):
    identity, _ = front.receive_type(protocol.Ready)
    front.send(identity, protocol.Disconnect("unknown worker; announce again"))
    again, ready = front.receive_type(protocol.Ready)
    assert again == identity and ready.capacity == 3


def test_fatal_disconnect_ends_the_worker(front, worker):
    identity, _ = front.receive_type(protocol.Ready)
    front.send(identity, protocol.Disconnect("protocol version 9, this process speaks 1", fatal=True))
    assert worker.wait(timeout=DEADLINE) == 1
    _, bye = front.receive_type(protocol.Disconnect)
    assert bye.handback == []


@trio_test
async def test_pool_refuses_a_foreign_protocol_version(endpoint):
    def foreign_peer() -> protocol.Message:
        context = zmq.Context()
        peer = context.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.setsockopt(zmq.RCVTIMEO, int(DEADLINE * 1000))
        peer.connect(endpoint)
        peer.send(msgpack.packb({"v": 99, "t": "hb", "interval": 1.0}))
        try:
            return protocol.decode(peer.recv_multipart())
        finally:
            peer.close()
            context.term()

    async with make_pool(endpoint) as pool:
        bye = await trio.to_thread.run_sync(foreign_peer)
        assert isinstance(bye, protocol.Disconnect) and bye.fatal
        assert "protocol version 99" in bye.reason
        assert pool.status().workers == []
