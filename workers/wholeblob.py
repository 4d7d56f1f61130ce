"""A whole blob arriving for a ranged read: every chunk it carries is kept, none thrown away.

Registries that ignore `Range` (an ECR-like origin, an old Dragonfly, a cache with no next
source to turn to) answer a chunk fetch with ``200`` and the whole blob. The registry client
verifies such a body against the blob digest while streaming it (RegistryClient.stream_verified)
and hands every piece to `ChunkStream.feed`, which cuts out each chunk of the layer as its
compressed bytes complete, checks it against its own digest and stores it, as background fetch
does. Memory stays bounded by the chunks whose bytes are still arriving (one chunk, in blob
order), never the blob. When the stream ends the whole-blob digest has been checked: the layer
is FETCHED; a mismatch makes the caller distrust the layer (its chunks are removed).

The fetch that got the answer returns as soon as its own ranges have passed; the stream goes on
in a thread of the worker. Single flight per worker: while it runs, other jobs of this worker
for the same blob wait for it (`Streams.wait`) instead of asking the registry again, then find
their chunks stored; the front's readers wait for the chunks to appear in the store
(daemon/remote.py), so other workers do not ask either.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import replace
from typing import Callable, Iterable, Protocol

from lazylayer.shared.errors import DigestMismatchError
from lazylayer.shared.store.layers import Layers, LayerState
from lazylayer.workers.registry import deadline
from lazylayer.workers.registry.client import BlobStream
from lazylayer.workers.registry.transport import host_failure

log = logging.getLogger(__name__)

#: chunks stored in one write transaction while a blob streams: at most this many, or as soon as
#: they hold STORE_BYTES compressed bytes (a reader may be waiting for one of them) [chunks]
STORE_BATCH = 32
#: [bytes]
STORE_BYTES = 1 << 20
#: how often a job waiting for a stream of its worker looks for its chunks [s]
POLL = 0.05


def settle_layer(layers: Layers, digest: str, error: BaseException | None,
                 distrust: Callable[[str, str], None]) -> None:
    """After a whole-blob stream: the layer is FETCHED (digest checked), distrusted (digest
    mismatch), or carries the break-off as its last error - which the front's waiting reads
    look for (daemon/remote.py)."""
    if isinstance(error, DigestMismatchError):
        distrust(digest, "blob digest mismatch in a whole-blob answer to a ranged read")
    elif layers.get(digest) is None:
        return
    elif error is not None:
        layers.set_error(digest, f"the whole-blob answer to a ranged read broke off: {error}")
    else:
        layers.modify(digest, lambda r: replace(r, state=LayerState.FETCHED, fetched_bytes=r.blob_size))


class StreamBusy(Exception):
    """The registry sent the whole blob while another job of this worker streams it: the answer
    was closed unread; wait for that stream (`Streams.wait`) and look again."""


class Span(Protocol):
    """A chunk's compressed range (workers/jobparams.WantedChunk)."""

    @property
    def blob_offset(self) -> int: ...

    @property
    def blob_end(self) -> int: ...


class ChunkStream:
    """Cuts the chunks of ``spans`` out of a blob streamed in order; ``store`` gets batches of
    (chunk, compressed bytes) and verifies and stores them."""

    def __init__(self, spans: Iterable[Span], store: Callable[[list[tuple[Span, bytes]]], None]) -> None:
        self._pending = sorted(spans, key=lambda c: (c.blob_offset, c.blob_end))
        self._next = 0
        self._store = store
        self._buffer = bytearray()
        self._buffer_start = 0
        self._ready: list[tuple[Span, bytes]] = []
        self.stored = 0

    def feed(self, offset: int, piece: bytes) -> None:
        """The blob's bytes ``[offset, offset + len(piece))``, in order."""
        if self._next >= len(self._pending):
            return
        start = self._pending[self._next].blob_offset
        if not self._buffer:
            self._buffer_start = max(start, offset)
        lo = max(self._buffer_start + len(self._buffer), offset)
        if lo < offset + len(piece):
            self._buffer += piece[lo - offset:]
        end = self._buffer_start + len(self._buffer)
        while self._next < len(self._pending) and self._pending[self._next].blob_end <= end:
            chunk = self._pending[self._next]
            self._ready.append((chunk, bytes(self._buffer[chunk.blob_offset - self._buffer_start:
                                                         chunk.blob_end - self._buffer_start])))
            self._next += 1
        if self._next < len(self._pending):
            keep_from = min(self._pending[self._next].blob_offset, end)
            del self._buffer[:max(0, keep_from - self._buffer_start)]
            self._buffer_start = max(self._buffer_start, keep_from)
        else:
            self._buffer.clear()
        if (len(self._ready) >= STORE_BATCH or sum(len(data) for _, data in self._ready) >= STORE_BYTES
                or (self._ready and self._next >= len(self._pending))):
            self.flush()

    def flush(self) -> None:
        if self._ready:
            batch, self._ready = self._ready, []
            self._store(batch)
            self.stored += len(batch)


class Streams:
    """The blobs this worker is streaming whole right now (single flight per worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    def start(self, digest: str) -> bool:
        """Claim ``digest``; False when another job of this worker streams it already."""
        with self._lock:
            if digest in self._running:
                return False
            self._running[digest] = threading.Event()
            return True

    def done(self, digest: str) -> None:
        with self._lock:
            event = self._running.pop(digest, None)
        if event is not None:
            event.set()

    def wait(self, digest: str, arrived: Callable[[], bool]) -> bool:
        """While ``digest`` streams, wait (within the job's deadline) until ``arrived()`` says
        what the caller needs is stored, or the stream ended; True if it was streaming."""
        with self._lock:
            event = self._running.get(digest)
        if event is None:
            return False
        log.info("blob %s is streaming whole in this worker; waiting for it", digest)
        while not event.wait(min(POLL, max(0.0, deadline.remaining()))) and not arrived():
            if deadline.remaining() <= 0:
                raise host_failure(f"blob {digest}: the job's deadline passed while waiting for the whole blob "
                                   "this worker streams")
        return True


class WholeBody:
    """A `WholeBlobSink` for one chunk fetch (RegistryClient.read_ranges): when the registry
    sends the whole blob, the stream moves to a thread of its own that stores every missing
    chunk of the layer (``chunks``) as its bytes complete, and the fetch returns as soon as its
    own ranges have passed. ``finished(None)`` follows a stream whose blob digest matched,
    ``finished(error)`` one that broke off or whose digest did not match (DigestMismatchError:
    the caller distrusts the layer) - once the stream ended *and* the fetch called `release`
    after storing its own chunks, so a distrusted layer keeps none of them."""

    def __init__(self, streams: Streams, digest: str, chunks: Callable[[], list[Span]],
                 store: Callable[[list[tuple[Span, bytes]]], None],
                 finished: Callable[[BaseException | None], None]) -> None:
        self._streams = streams
        self._digest = digest
        self._chunks = chunks
        self._store = store
        self._finished = finished
        #: the registry sent the whole blob
        self.started = False
        self._lock = threading.Lock()
        self._released = False
        #: how the last stream ended, once it did: [error or None]
        self._ended: list[BaseException | None] = []

    def run(self, stream: BlobStream, until: int) -> None:
        self.started = True
        if not self._streams.start(self._digest):  # another job of this worker keeps it already
            def refuse(offset: int, piece: bytes) -> None:
                raise StreamBusy(self._digest)
            stream(refuse)  # closes the answer at its first piece
        try:
            chunks = ChunkStream(self._chunks(), self._store)
        except BaseException:
            self._streams.done(self._digest)
            raise
        with self._lock:
            self._ended = []
        passed = threading.Event()
        reached: list[bool] = []
        failure: list[BaseException] = []

        def feed(offset: int, piece: bytes) -> None:
            chunks.feed(offset, piece)
            if offset + len(piece) >= until and not reached:
                reached.append(True)
                passed.set()

        def body() -> None:
            try:
                stream(feed)
                chunks.flush()
                log.info("blob %s came whole: %d more chunk(s) of it stored, digest checked",
                         self._digest, chunks.stored)
                self._end(None)
            except DigestMismatchError as exc:
                failure.append(exc)
                self._end(exc)
            except Exception as exc:  # noqa: BLE001 - the waiting fetch raises it, or it is logged
                failure.append(exc)
                chunks.flush()  # what was verified stays; later reads fetch the rest
                log.warning("blob %s: the whole-blob answer broke off: %s", self._digest, exc)
                self._end(exc)
            finally:
                self._streams.done(self._digest)
                passed.set()

        threading.Thread(target=body, name=f"whole-{self._digest[7:19]}", daemon=True).start()
        left = deadline.remaining()
        if not passed.wait(left if math.isfinite(left) else None):
            raise host_failure(f"blob {self._digest}: the job's deadline passed while the whole blob streamed "
                               "(the stream goes on in this worker)")
        if failure and not reached:
            raise failure[0]

    def _end(self, error: BaseException | None) -> None:
        with self._lock:
            self._ended = [error]
            ready = self._released
        if ready:
            self._finished(error)

    def release(self) -> BaseException | None:
        """The fetch stored its own chunks (or failed): the stream's outcome may settle now.
        Returns the stream's error when it had ended already (None otherwise)."""
        with self._lock:
            if self._released:
                return None
            self._released = True
            ended = list(self._ended)
        if ended:
            self._finished(ended[0])
            return ended[0]
        return None
