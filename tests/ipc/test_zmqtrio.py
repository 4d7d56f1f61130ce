"""The trio <-> ZeroMQ pump on its own: a trio DEALER against a blocking ROUTER echo thread."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import trio
import trio.testing
import zmq

from lazylayer.daemon.zmqtrio import TrioSocket
from tests.ipc.harness import DEADLINE, trio_test


@contextmanager
def echo_server(context: zmq.Context, endpoint: str) -> Iterator[None]:
    """A ROUTER owned by its own thread (sockets are never shared between threads)."""
    stop = threading.Event()
    bound = threading.Event()

    def serve() -> None:
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        bound.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(50):
                sock.send_multipart(sock.recv_multipart())
        sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    bound.wait()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Client:
    """Request/reply over one TrioSocket: request id -> Event, as limits §3.5 recommends."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = TrioSocket(context.socket(zmq.DEALER), self._on_message)
        self.socket.socket.connect(endpoint)  # after TrioSocket set IMMEDIATE: it applies to new pipes only
        self.replies: dict[int, list[bytes]] = {}
        self.waiting: dict[int, trio.Event] = {}

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        request_id = int(frames[0].bytes)
        self.replies[request_id] = [f.bytes for f in frames[1:]]
        self.waiting.pop(request_id).set()

    async def call(self, request_id: int, payload: bytes) -> list[bytes]:
        self.waiting[request_id] = done = trio.Event()
        await self.socket.send([str(request_id).encode(), payload])
        await done.wait()
        return self.replies.pop(request_id)


@trio_test
async def test_many_concurrent_round_trips_do_not_stall(run_dir):
    endpoint = f"ipc://{run_dir}/echo.sock"
    context = zmq.Context()
    with echo_server(context, endpoint):
        client = Client(context, endpoint)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.socket.pump)

            async def worker(task: int) -> None:
                for i in range(250):
                    request_id = task * 1_000_000 + i
                    payload = b"%d" % request_id * (i % 50)
                    assert await client.call(request_id, payload) == [payload]

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as callers:
                    for task in range(32):
                        callers.start_soon(worker, task)
            nursery.cancel_scope.cancel()
        client.socket.close()
    context.term()


@trio_test
async def test_send_waits_for_pollout_until_a_peer_appears(run_dir):
    """IMMEDIATE=1: with no connected peer a send gets zmq.Again; send() must wait for POLLOUT
    (signalled through the pump) and then go out, not spin, drop or hang."""
    endpoint = f"ipc://{run_dir}/late.sock"
    context = zmq.Context()
    client = Client(context, endpoint)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.socket.pump)
        assert not client.socket.try_send([b"0", b"too early"])
        results = []
        answered = trio.Event()

        async def call() -> None:
            results.append(await client.call(1, b"late"))
            answered.set()

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as callers:
                callers.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
                assert results == []
                with echo_server(context, endpoint):
                    await answered.wait()  # the server thread stays up until the echo is back
        assert results == [[b"late"]]
        nursery.cancel_scope.cancel()
    client.socket.close()
    context.term()
