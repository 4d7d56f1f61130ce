"""The front's FUSE request loop (daemon/fusedispatch.py): a request already queued is taken
without a scheduler round, readers still hand over when one blocks, and other tasks still run.

The lock and the wait are checked on real trio and a real socket; the hand-over also on a real
mount, where a read held by a stalled registry must not stop the other requests."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from pathlib import Path
from typing import Awaitable, Callable

import pyfuse3
import pytest
import trio
import trio.testing

from lazylayer.daemon import fusedispatch
from lazylayer.daemon.fusedispatch import YIELD_EVERY, _Readiness, _ReadLock
from tests.fuse.daemonproc import start_daemon
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.fetchstack import PushedImage, expected_files
from tests.support.registry import RunningRegistry


def test_a_free_lock_is_taken_without_a_checkpoint():
    async def main() -> None:
        lock = _ReadLock()
        with trio.testing.assert_no_checkpoints():
            for _ in range(3):
                async with lock:
                    pass

    trio.run(main)


def test_a_parked_reader_takes_the_lock_when_the_holder_blocks():
    """A releases and goes to sleep (a request waiting for a fetch): B, parked, gets the lock;
    A re-taking the free lock first (a request served at once) parks B again. Never both."""
    async def main() -> None:
        lock = _ReadLock()
        inside: list[str] = []
        order: list[str] = []

        async def reader(name: str, rounds: int, pause: float) -> None:
            for _ in range(rounds):
                async with lock:
                    inside.append(name)
                    assert inside == [name]
                    order.append(name)
                    inside.remove(name)
                if pause:
                    await trio.sleep(pause)

        async with trio.open_nursery() as nursery:
            async with lock:
                nursery.start_soon(reader, "B", 3, 0)
                await trio.testing.wait_all_tasks_blocked()  # B parked
            # released: A re-takes it at once twice (no yield), then blocks
            for _ in range(2):
                async with lock:
                    order.append("A")
            await trio.sleep(0.05)
        assert order == ["A", "A", "B", "B", "B"]

    trio.run(main)


def _on_a_socket_pair(body: Callable[[socket.socket, socket.socket, _Readiness], Awaitable[None]],
                      burst_ended: ctypes.c_int | None = None) -> None:
    """``body(ours, theirs, readiness)`` under trio on a fresh socket pair: ``ours`` stands for
    the FUSE fd, what ``theirs`` sends for queued requests."""
    async def main() -> None:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            await body(ours, theirs, _Readiness(burst_ended))

    trio.run(main)


def test_a_queued_request_is_taken_at_once_and_every_so_often_through_trio():
    async def body(ours: socket.socket, theirs: socket.socket, readiness: _Readiness) -> None:
        theirs.send(b"x")  # a request queued, never read: readable all along
        with trio.testing.assert_no_checkpoints():
            for _ in range(YIELD_EVERY):
                await readiness.wait_readable(ours.fileno())
        with trio.testing.assert_checkpoints():
            await readiness.wait_readable(ours.fileno())

    _on_a_socket_pair(body)


def test_after_a_burst_served_in_c_other_tasks_get_their_turn():
    """daemon/attrcache.c raises the flag when it hands back after serving requests itself."""
    flag = ctypes.c_int(0)

    async def body(ours: socket.socket, theirs: socket.socket, readiness: _Readiness) -> None:
        theirs.send(b"x")
        with trio.testing.assert_no_checkpoints():
            await readiness.wait_readable(ours.fileno())
        flag.value = 1
        with trio.testing.assert_checkpoints():
            await readiness.wait_readable(ours.fileno())
        assert flag.value == 0
        with trio.testing.assert_no_checkpoints():  # a fresh credit
            await readiness.wait_readable(ours.fileno())

    _on_a_socket_pair(body, flag)


def test_an_empty_fd_is_waited_for():
    async def body(ours: socket.socket, theirs: socket.socket, readiness: _Readiness) -> None:
        async def later() -> None:
            await trio.sleep(0.05)
            theirs.send(b"x")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            await readiness.wait_readable(ours.fileno())
            assert ours.recv(1) == b"x"

    _on_a_socket_pair(body)


def test_install_changes_only_the_lock_and_the_wait(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pyfuse3, "trio", trio)
    fusedispatch.install()
    swapped = pyfuse3.trio  # type: ignore[attr-defined]
    assert swapped.Lock is _ReadLock
    assert swapped.lowlevel.wait_readable.__self__.__class__ is _Readiness
    assert swapped.open_nursery is trio.open_nursery
    assert swapped.ClosedResourceError is trio.ClosedResourceError
    assert swapped.lowlevel.current_task is trio.lowlevel.current_task
    assert swapped.lowlevel.notify_closing is trio.lowlevel.notify_closing


#: only the chunk a read asks for is fetched, so the cached file and the stalled one stay apart
QUIET = {"background": {"enabled": False}, "prefetch": {"enabled": False},
         "fuse": {"neighbour_window": 0, "neighbour_ahead": 0, "neighbour_behind": 0, "read_ahead_chunks": 0}}


def _read_uncached(path: Path) -> bytes:
    """The file's bytes through FUSE (its page cache dropped first: every read reaches the front)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def test_a_read_held_by_a_stalled_registry_leaves_the_mount_serving(app_image: PushedImage,
                                                                     registry: RunningRegistry, tmp_path: Path):
    layer = app_image.layers[1]
    expected = expected_files(layer.root)
    proxy = FaultProxy(registry.host)
    daemon = start_daemon(tmp_path / "d", workers=1, config=QUIET)
    try:
        diff = daemon.layer_dir(app_image.ref_via(proxy.host), layer.digest)
        assert _read_uncached(diff / "opt/exact") == expected["opt/exact"]
        proxy.add(Rule("stall", times=None, ranged=True, after=10))
        before = len(proxy.seen)
        outcome: list[object] = []

        def held() -> None:
            try:
                outcome.append(_read_uncached(diff / "opt/data/blob.bin"))
            except OSError as e:
                outcome.append(e)

        reader = threading.Thread(target=held, daemon=True)
        reader.start()
        while reader.is_alive() and not any(s.method == "GET" and s.range for s in proxy.seen[before:]):
            reader.join(0.01)
        for _ in range(200):  # open, reads, release: each one a request to the front
            assert _read_uncached(diff / "opt/exact") == expected["opt/exact"]
        assert reader.is_alive(), "the stalled read ended before the others were served"
        proxy.release()
        reader.join(60)
        assert not reader.is_alive()
        got = outcome[0]
        assert got == expected["opt/data/blob.bin"] or (isinstance(got, OSError) and got.errno == errno.EIO), got
    finally:
        daemon.stop()
        proxy.stop()
