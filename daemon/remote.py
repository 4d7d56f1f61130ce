"""The front side of fetching: what the daemon asks of the worker pool, and the cache reads around it.

`Remote` turns "resolve this image", "register this layer", "read these bytes of this file" into
jobs for the workers (workers/fetcher.py) and reads the results from the shared LMDB store. The
front itself never writes the store and never touches the network.

Why it is built this way:
- **Hits never leave the process.** `read` first tries one LMDB read transaction
  (shared/store/reads.read_range); only the chunks it reports missing become a job.
- **Per-chunk dedup.** Every chunk being fetched is mapped to the job fetching it. A reader that
  needs a chunk already in flight joins that job (`WorkerPool.submit` with the job's dedup key,
  which also raises the job to the reader's priority) instead of fetching it again, even when
  the two requests' chunk sets only overlap.
- **Workers stay stateless.** Every job carries the chunk descriptors (and, for background
  fetch, the running blob hash) so any worker can run it, and a re-dispatched job runs the same.
- **Priorities.** Demand reads are FOREGROUND, prefetch and read-ahead PREFETCH, the walk over
  the whole blob BACKGROUND (held by the pool while foreground work is active).
- **A failing registry is paused** (daemon/hostbackoff.py) and its jobs are grouped by registry
  in the pool, so a stalled registry costs its own reads, not other registries' (issue 15).
- **A blob that came whole is waited for.** When a registry answers a chunk fetch with the whole
  blob, the worker keeps streaming it into the store (workers/wholeblob.py) and says so in the
  reply; until it is done, reads of that layer wait for their chunks to appear in the store
  instead of asking the registry for the blob again through another worker.
- **Background fetch checks the blob.** The blob is walked in order in pieces of about
  ``piece_size`` compressed bytes cut where no chunk spans the cut; each piece's reply carries
  the sha256 state that the next piece resumes, and the last piece's worker compares the digest
  (a mismatch marks the layer FAILED and removes its chunks, then raises DigestMismatchError).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence

import msgpack
import trio

from lazylayer.daemon.fetchsettings import FetchSettings
from lazylayer.daemon.fetchstats import FetchObserver, FetchStats, ReplayTally
from lazylayer.daemon.hostbackoff import HostBackoff, MirrorRanges, is_host_failure
from lazylayer.daemon.inflight import Pending, until_stored
from lazylayer.daemon.jobqueue import Priority
from lazylayer.daemon.neighbours import Neighbours
from lazylayer.daemon.pieces import plan_pieces
from lazylayer.daemon.pool import PoolReply, WorkerPool
from lazylayer.daemon.unstored import UnstoredChunks
from lazylayer.shared.errors import CacheError, LazyLayerError
from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION
from lazylayer.shared.store.audit import ChunkAudit
from lazylayer.shared.store.blobs import blob_path
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.env import Store
from lazylayer.shared.store.eviction import AccessLog
from lazylayer.shared.store.layers import LayerRecord, Layers, LayerState
from lazylayer.shared.store.metadata import FileChunk, Metadata, NodeRef
from lazylayer.shared.store.reads import read_range

log = logging.getLogger(__name__)

#: Compressed bytes per prefetch job: small enough that every worker gets a share [bytes].
PREFETCH_PIECE = 2 << 20

#: Job kinds the pool runs one at a time per worker process: registering a layer is Python per
#: TOC entry with the GIL held, so two in one process are no faster than one after the other.
EXCLUSIVE_KINDS = frozenset({"resolve_layer"})

#: Reads retried after a fetch; more only when eviction keeps removing what was just fetched.
READ_ATTEMPTS = 3

#: How often a read waiting for a blob that streams whole into the store looks for its chunks [s]
STREAM_POLL = 0.02


@dataclass(frozen=True)
class LayerDescriptor:
    """One layer of a resolved image, as the manifest describes it."""

    digest: str
    size: int
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    #: sha256 of the uncompressed tar, from the image config (None when it lists none)
    diff_id: str | None = None
    #: where else the blob may be fetched from (non-distributable layers; workers/sources/urls.py)
    urls: tuple[str, ...] = ()

    @property
    def toc_digest(self) -> str | None:
        return self.annotations.get(TOC_DIGEST_ANNOTATION)


@dataclass(frozen=True)
class ResolvedImage:
    ref: str
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerDescriptor, ...]


def chunk_wire(chunk: FileChunk) -> list[Any]:
    """A chunk as the fetcher jobs expect it (workers/jobparams.WantedChunk)."""
    return [chunk.blob_offset, chunk.blob_end, chunk.inner_offset, chunk.size, chunk.digest, chunk.data_key,
            chunk.chunk_offset]


def registry_of(ref: str) -> str:
    """The registry part of an image reference as written (``host[:port]`` before the first
    slash when it looks like a host, else Docker Hub): enough to group and pause by."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _record(result: dict[str, Any]) -> LayerRecord:
    return LayerRecord.decode(msgpack.packb(result))


class Remote:
    """Front side of fetching: the pool plus the store. All methods are trio async."""

    def __init__(self, pool: WorkerPool, store: Store, settings: FetchSettings,
                 observer: FetchObserver | None = None) -> None:
        self.pool = pool
        self.store = store
        self.settings = settings
        self.observer = observer or FetchObserver()
        #: chunk accesses of served reads, shipped to the janitor job (LRU) by the daemon
        self.accesses = AccessLog()
        self.meta = Metadata(store)
        self.chunks = ChunkStore(store)
        #: cached chunks checked against their digest in this process (DESIGN: never serve rot)
        self.audit = ChunkAudit()
        #: verified chunks a worker could not store (cache filesystem full)
        self.unstored = UnstoredChunks()
        self.stats = FetchStats()
        self._index = store.db("chunk_index")
        self._inflight: dict[bytes, Pending] = {}
        #: layer digest -> until when (trio clock) a worker streams its whole blob into the store
        self._streaming: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._background_slots = trio.CapacityLimiter(max(1, settings.background_concurrency))
        #: what a miss fetches besides its own chunks (daemon/neighbours.py)
        self.neighbours = Neighbours(self.meta, settings.neighbour_window, settings.neighbour_ahead,
                                     settings.neighbour_behind)
        #: when the bandwidth cap lets the next background piece start (trio clock)
        self._background_next = 0.0
        self.host_backoff = HostBackoff(settings.request_timeout / 2)
        #: chunks profile replays fetched and whether they were read since
        self.replayed = ReplayTally()
        #: mirrors' range support as the workers report it, passed on to every job
        self.mirrors = MirrorRanges()
        #: where jobs a read stopped waiting for are followed to their end (daemon/inflight.py)
        self._followers: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """The daemon's nursery: side jobs run there, and jobs a demand read returned from
        early (its own chunks stored) are followed there to their end."""
        self._followers = nursery
        self.neighbours.attach(nursery)

    async def _submit(self, kind: str, params: dict[str, Any], priority: Priority = Priority.FOREGROUND,
                      dedup_key: Hashable | None = None, timeout: float | None = None,
                      payloads: Sequence[bytes] = (), rank: int = 0) -> PoolReply:
        registry = registry_of(params["ref"]) if "ref" in params else None
        if registry is not None:
            self.host_backoff.check(registry)
            marks = self.mirrors.marks()
            if marks:
                params = {**params, "mirror_marks": marks}
        started = time.monotonic()
        try:
            reply = await self.pool.submit(kind, params, payloads, priority=priority, dedup_key=dedup_key,
                                           group=registry, rank=rank,
                                           timeout=self.settings.request_timeout if timeout is None else timeout)
        except LazyLayerError as exc:
            if registry is not None and is_host_failure(exc):
                self.host_backoff.failed(registry, exc)
            raise
        finally:
            self.observer.job_done(kind, time.monotonic() - started)
        if registry is not None:
            self.host_backoff.succeeded(registry)
        self.mirrors.learn(reply.result.get("mirrors", ()))
        return reply

    # -- images and layers ---------------------------------------------------------------------

    async def resolve_image(self, ref: str, platform: str | None = None) -> ResolvedImage:
        """Manifest (platform: "os/arch[/variant]", default the host's) and its layers, bottom first."""
        reply = await self._submit("resolve_image", {"ref": ref, "platform": platform},
                                   dedup_key=("resolve_image", ref, platform))
        r = reply.result
        layers = tuple(LayerDescriptor(l["digest"], l["size"], l["media_type"], dict(l["annotations"]),
                                       l.get("diff_id"), tuple(l.get("urls", ()))) for l in r["layers"])
        return ResolvedImage(r["ref"], r["manifest_digest"], r["config_digest"], layers)

    async def resolve_layer(self, ref: str, desc: LayerDescriptor) -> LayerRecord:
        """Footer + TOC fetched and checked against the TOC digest annotation, metadata
        registered in the store (idempotent); the layer's record."""
        params = {"ref": ref, "digest": desc.digest, "size": desc.size, "toc_digest": desc.toc_digest,
                  "media_type": desc.media_type, "urls": list(desc.urls),
                  "allow_unverified": self.settings.allow_unverified,
                  "require_toc_digest": self.settings.require_toc_digest}
        reply = await self._submit("resolve_layer", params, dedup_key=("resolve_layer", desc.digest),
                                   timeout=self.settings.resolve_timeout)
        return _record(reply.result)

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, ref: str, layer: LayerRecord, node: NodeRef, file_size: int,
                   offset: int, size: int, prefetched: bool = False) -> bytes:
        """Bytes ``[offset, offset+size)`` of a regular file (clipped at ``file_size``): cached
        chunks from one read txn, missing ones fetched (one FOREGROUND job) and read again.
        ``prefetched``: the layer's start-up reads were prefetched (a miss starts no side job)."""
        for attempt in range(READ_ATTEMPTS):
            got = read_range(self.meta, self.chunks, node, file_size, offset, size, audit=self.audit,
                             unstored=self.unstored)
            if attempt == 0:  # unaudited chunks are cached: hits, served once checked
                self.observer.chunks_read(len(got.used) + len(got.unaudited), len(got.missing))
            if got.data is not None:
                for key in got.used:
                    self.accesses.touch(key)
                if self.replayed.read(got.used):
                    self._report_replay()
                return got.data
            corrupt: tuple[bytes, ...] = ()
            if got.unaudited:  # first read of these cached chunks in this process: hash them, off the loop
                corrupt = await trio.to_thread.run_sync(self.audit.check_stored, self.chunks, got.unaudited)
                if corrupt:
                    log.warning("layer %s: %d cached chunk(s) do not match their digest; fetching them again",
                                layer.digest, len(corrupt))
                    self.observer.cache_corrupt(len(corrupt))
            missing = got.missing + tuple(c for c in got.unaudited if c.data_key in corrupt)
            if missing:
                along: list[FileChunk] = []
                if attempt == 0:
                    along, aside = self.neighbours.of(node, missing, prefetched=prefetched)
                    if aside:
                        self.neighbours.start(functools.partial(self._fetch_aside, ref, layer, aside))
                await self.fetch_chunks(ref, layer, missing, Priority.FOREGROUND, replace=corrupt, along=along,
                                        early=True)
        raise CacheError(f"layer {layer.digest}: chunks were evicted again right after being fetched; "
                         "the cache budget is too small for the data being read")

    async def _fetch_aside(self, ref: str, layer: LayerRecord, chunks: list[FileChunk]) -> None:
        """A miss's side job: PREFETCH priority; a demand read of one of its chunks joins it
        (raising it to FOREGROUND) and reports errors: here they only log."""
        try:
            await self.fetch_chunks(ref, layer, chunks, Priority.PREFETCH)
        except LazyLayerError as exc:
            log.debug("neighbours of a miss in layer %s: %s", layer.digest, exc)

    def chunks_ahead(self, node: NodeRef, offset: int, count: int | None = None) -> list[FileChunk]:
        """The ``count`` (default ``read_ahead_chunks``) chunks of a file from the one holding
        ``offset`` on, cached or not."""
        out: list[FileChunk] = []
        for _ in range(self.settings.read_ahead_chunks if count is None else count):
            found = self.meta.chunks_covering(node, offset, 1)
            if not found:
                break
            out.append(found[0])
            offset = found[0].end
        return out

    async def read_ahead(self, ref: str, layer: LayerRecord, node: NodeRef, offset: int,
                         count: int | None = None) -> None:
        """Fetch, at PREFETCH priority, the uncached ones among `chunks_ahead`. Meant to be
        started in the background after a sequential read ending at ``offset``; a demand read
        that needs one of these chunks joins the job and raises it to FOREGROUND."""
        chunks = self.chunks_ahead(node, offset, count)
        if chunks:
            await self.fetch_chunks(ref, layer, chunks, Priority.PREFETCH)

    async def fetch_chunks(self, ref: str, layer: LayerRecord, chunks: Sequence[FileChunk],
                           priority: Priority, replace: Sequence[bytes] = (),
                           along: Sequence[FileChunk] = (), early: bool = False, rank: int = 0) -> int:
        """Make sure ``chunks`` are in the store (or, when the cache is full, in `unstored`):
        cached ones are skipped, chunks already being fetched are waited for, the rest are
        fetched by one new job. ``replace``: keys of stored chunks found corrupt, which the job
        checks and drops before fetching them again. Raises the first typed error among the
        jobs waited on. ``along``: chunks the new job also fetches if nobody has them or is
        fetching them, never waited for on their own (neighbours of a miss). ``early``: return as
        soon as ``chunks`` are stored, the jobs followed to their end in the daemon's nursery
        (daemon/inflight.py). ``rank``: the new job's place among those of its priority (a
        prefetch piece's index: daemon/jobqueue.py). Returns the compressed bytes the job this
        call started fetched (0 if it started none or has not ended)."""
        wanted = {c.data_key: c for c in chunks}
        extra = {c.data_key: c for c in along if c.data_key not in wanted and c.data_key not in self._inflight}
        cached = self.store.read(lambda txn: {k for k in (*wanted, *extra) if k not in replace and (
            txn.get(k, db=self._index) is not None or k in self.unstored)})
        waits: dict[int, Pending] = {}
        mine: list[FileChunk] = []
        started: Pending | None = None
        for key, chunk in wanted.items():
            if key in cached:
                continue
            pending = self._inflight.get(key)
            if pending is None:
                mine.append(chunk)
            else:
                waits[id(pending)] = pending
                self.stats.joined += 1
        if mine and layer.digest in self._streaming:
            mine = await self._wait_for_stream(layer.digest, mine)
        if mine:
            mine += [chunk for key, chunk in extra.items() if key not in cached]
            params = {"ref": ref, "digest": layer.digest, "chunks": [chunk_wire(c) for c in mine],
                      "replace": [c.digest for c in mine if c.data_key in replace],
                      # a reader waits: may read beside a filling pull-through cache (README "Running a fleet")
                      "urgent": priority is Priority.FOREGROUND}
            started = Pending(("fetch_chunks", next(self._ids)), params, tuple(c.data_key for c in mine), rank)
            for key in started.keys:
                self._inflight[key] = started
            waits[id(started)] = started
            self.stats.jobs += 1
        errors: list[LazyLayerError] = []
        if early and self._followers is not None:
            for pending in waits.values():
                self._followers.start_soon(self._follow, pending, priority)
            needed = [] if replace else [key for key in wanted if key not in cached]
            if await until_stored(self.store, self._index, list(waits.values()), needed):
                self.audit.trust(needed)
                return 0
            errors = [pending.error for pending in waits.values() if pending.error is not None]
        else:
            async with trio.open_nursery() as nursery:
                for pending in waits.values():
                    nursery.start_soon(self._wait, pending, priority, errors)
        if errors:
            raise errors[0]
        return 0 if started is None else started.fetched

    async def _wait_for_stream(self, digest: str, chunks: list[FileChunk]) -> list[FileChunk]:
        """The chunks not stored once the whole-blob stream of layer ``digest`` ended (the layer
        FETCHED or FAILED, or a new last error: it broke off) or ran past its time; [] as soon
        as all of them are stored."""
        first = Layers(self.store).get(digest)
        while first is not None and trio.current_time() < self._streaming.get(digest, 0.0):
            chunks = self.store.read(lambda txn: [c for c in chunks if txn.get(c.data_key, db=self._index) is None])
            if not chunks:
                return chunks
            record = Layers(self.store).get(digest)
            if (record is None or record.state in (LayerState.FETCHED, LayerState.FAILED)
                    or record.last_error != first.last_error):
                break
            await trio.sleep(STREAM_POLL)
        self._streaming.pop(digest, None)
        return chunks

    async def _wait(self, pending: Pending, priority: Priority, errors: list[LazyLayerError]) -> None:
        """One waiter on ``pending``'s job. The job has ended for every waiter when one gets
        its reply, or when the last one leaves with an error: one waiter's own timeout, while
        others (with later deadlines) still wait, does not end it (`Pending.done`)."""
        pending.waiters += 1
        answered = False
        try:
            reply = await self._submit("fetch_chunks", pending.params, priority, pending.dedup_key,
                                       rank=pending.rank)
            answered = True
            pending.error = None
            if not pending.counted:
                pending.counted = True
                self.audit.trust(pending.keys)  # the worker checked every one just now
                for key, data in zip(reply.result.get("unstored", ()), reply.payloads):
                    self.unstored.add(bytes(key), bytes(data))
                self.stats.chunks += reply.result["stored"]
                self.stats.bytes += reply.result["bytes"]
                pending.fetched = reply.result["bytes"]
                if reply.result.get("whole"):
                    self._streaming[pending.params["digest"]] = trio.current_time() + self.settings.request_timeout
                self.stats.by_worker[reply.worker] += 1
                self.observer.fetched(priority, reply.result["bytes"])
        except LazyLayerError as exc:
            errors.append(exc)
            pending.error = exc
        finally:
            pending.waiters -= 1
            if pending.waiters == 0:
                for key in pending.keys:
                    if self._inflight.get(key) is pending:
                        del self._inflight[key]
        if answered or pending.waiters == 0:  # not when cancelled: the job may go on for the others
            pending.done.set()

    async def _follow(self, pending: Pending, priority: Priority) -> None:
        """`_wait` in the daemon's nursery, for a read that may return before the job ends:
        anything it raises stays here (logged) instead of ending the daemon."""
        try:
            await self._wait(pending, priority, [])
        except Exception as exc:  # noqa: BLE001 - a bug must not take the nursery down
            log.exception("following fetch job %s", pending.dedup_key)
            pending.error = pending.error or LazyLayerError(f"fetch job failed: {exc}")
            pending.done.set()

    # -- whole-layer work ----------------------------------------------------------------------

    async def prefetch(self, ref: str, layer: LayerRecord) -> int:
        """The layer's landmark range (or ``prefetch_size`` bytes for landmark-less layers);
        returns the compressed bytes fetched. Moves the layer to READY.

        The range is cut into pieces of about PREFETCH_PIECE fetched as chunk jobs at once, so
        every worker inflates a share (one job for the whole range made a container start
        with prefetch slower than without), and a demand read of a chunk in flight joins its
        piece instead of waiting for all of it. The closing `prefetch` job then finds the
        chunks stored and only moves the layer's state."""
        end = layer.prefetch_end if layer.prefetch_end is not None else min(self.settings.prefetch_size,
                                                                            layer.blob_size)
        # a thread: without a node bound the scan walks every chunk row of the layer (2 s for
        # 200k), and the loop must not wait
        chunks = await trio.to_thread.run_sync(self.meta.prefetch_chunks, layer.layer_id, end,
                                               layer.prefetch_nodes) if end > 0 else []
        fetched = 0
        if chunks:
            pieces = plan_pieces(chunks, max(c.blob_end for c in chunks), PREFETCH_PIECE)
            fetched = await self.fetch_pieces(ref, layer, [p.chunks for p in pieces if p.chunks])
        params = {"ref": ref, "digest": layer.digest, "size": layer.blob_size,
                  "prefetch_size": self.settings.prefetch_size}
        reply = await self._submit("prefetch", params, Priority.PREFETCH, ("prefetch", layer.digest))
        self.observer.fetched(Priority.PREFETCH, reply.result["bytes"])
        return fetched + reply.result["bytes"]

    async def fetch_pieces(self, ref: str, layer: LayerRecord, pieces: Sequence[Sequence[FileChunk]]) -> int:
        """One PREFETCH chunk job per piece, all submitted at once, so every worker takes a share
        and a demand read of a chunk in flight joins its piece (raising it to FOREGROUND); ranked
        by their order, so the first pieces of several layers go before the later ones of any.
        Raises the first error once all are done; returns the compressed bytes fetched."""
        fetched = 0
        errors: list[LazyLayerError] = []

        async def piece(members: Sequence[FileChunk], rank: int) -> None:
            nonlocal fetched
            try:
                fetched += await self.fetch_chunks(ref, layer, members, Priority.PREFETCH, rank=rank)
            except LazyLayerError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for rank, members in enumerate(pieces):
                nursery.start_soon(piece, members, rank)
        if errors:
            raise errors[0]
        return fetched

    def _report_replay(self) -> None:
        tally = self.replayed
        self.observer.profile_chunks(tally.prefetched, tally.hits, tally.waste)

    def replay_started(self, keys: Iterable[bytes]) -> None:
        """A profile replay is about to fetch the chunks with these keys (uncached ones)."""
        self.replayed.fetched(keys)
        self._report_replay()

    async def background_fetch(self, ref: str, layer: LayerRecord,
                               progress: Callable[[int, int], None] | None = None) -> None:
        """Walk the whole blob in order at BACKGROUND priority (held while foreground reads are
        active), storing every missing chunk and checking the blob digest at the end; the layer
        is then FETCHED. ``progress(done, total)`` gets compressed bytes. No timeout: waiting
        behind foreground work is the point; cancel the task to stop it. Over all layers at
        most ``background_concurrency`` pieces are in flight, paced to ``bandwidth_limit``
        (pieces of one layer go in order anyway: each carries the previous one's hash state)."""
        if layer.state is LayerState.FETCHED:
            return
        await self.pool.background_gate.wait_open()  # not even planned while reads are busy
        # a thread: a 200k-entry layer's chunk list took 2 s to read, which would stall every read
        all_chunks = await trio.to_thread.run_sync(self.meta.prefetch_chunks, layer.layer_id, layer.blob_size + 1)
        state: bytes | None = None
        for piece in plan_pieces(all_chunks, layer.blob_size, self.settings.piece_size):
            params = {"ref": ref, "digest": layer.digest, "size": layer.blob_size, "start": piece.start,
                      "end": piece.end, "chunks": [chunk_wire(c) for c in piece.chunks], "state": state}
            async with self._background_slots:
                await self._pace(piece.end - piece.start)
                self.stats.background_peak = max(self.stats.background_peak,
                                                 self._background_slots.borrowed_tokens)
                reply = await self._submit("background_fetch", params, Priority.BACKGROUND,
                                           ("background_fetch", layer.digest, piece.start), timeout=math.inf)
            state = reply.result["state"]
            # checked by the worker moments ago: no hash on the front's first read of them
            self.audit.trust(bytes(key) for key in reply.result.get("stored_keys", ()))
            self.observer.fetched(Priority.BACKGROUND, reply.result["bytes"])
            if progress is not None:
                progress(piece.end, layer.blob_size)

    async def _pace(self, nbytes: int) -> None:
        """Wait for the bandwidth cap: each piece books ``nbytes / limit`` seconds of the link."""
        limit = self.settings.bandwidth_limit
        if limit <= 0:
            return
        start = max(trio.current_time(), self._background_next)
        self._background_next = start + nbytes / limit
        await trio.sleep_until(start)

    async def blob(self, ref: str, layer: LayerRecord) -> str:
        """Path of the layer's verified compressed blob, fetched whole by a worker (PREFETCH
        priority, no timeout: it is the whole blob) the first time anyone asks."""
        path = blob_path(self.store.options.path, layer.digest)
        if not os.path.exists(path):
            params = {"ref": ref, "digest": layer.digest, "size": layer.blob_size}
            reply = await self._submit("fetch_blob", params, Priority.PREFETCH, ("fetch_blob", layer.digest),
                                       timeout=math.inf)
            self.observer.fetched(Priority.PREFETCH, reply.result["bytes"])
        return path

    async def janitor(self, budget: int | None = None) -> dict[str, Any]:
        """Ship the accesses noted since the last call to a worker's janitor job (LRU order,
        trim to the low watermark); ``budget`` also becomes the shared cache cap. On failure
        the accesses are dropped: the LRU order is approximate anyway."""
        accesses = [[key, when] for key, when in self.accesses.drain()]
        reply = await self._submit("janitor", {"accesses": accesses, "budget": budget}, Priority.PREFETCH)
        return reply.result

    async def record_profile(self, manifest: str, run: bytes) -> dict[str, Any]:
        """Hand one recorded run (a profile document) to a worker, which merges it into the
        stored profile of ``manifest``: the front never writes LMDB."""
        reply = await self._submit("profile_record", {"manifest": manifest}, Priority.PREFETCH, payloads=[run])
        return reply.result

    async def fetch_profile(self, ref: str, manifest: str, max_bytes: int) -> bool:
        """Have a worker look the registry up for a profile of ``manifest`` (OCI referrers) and
        store it; False when the registry has none."""
        reply = await self._submit("profile_fetch", {"ref": ref, "manifest": manifest, "max_bytes": max_bytes},
                                   Priority.PREFETCH, ("profile_fetch", manifest))
        return bool(reply.result["found"])

    async def check(self, ref: str, desc: LayerDescriptor) -> None:
        """Connectivity: the blob still answers a 1-byte ranged read with the expected size."""
        await self._submit("check", {"ref": ref, "digest": desc.digest, "size": desc.size},
                           dedup_key=("check", desc.digest))

    async def refresh(self, ref: str, desc: LayerDescriptor) -> None:
        """Forget the cached blob URL and tokens and resolve the blob again (new redirect, new
        credentials)."""
        await self._submit("refresh", {"ref": ref, "digest": desc.digest, "size": desc.size},
                           dedup_key=("refresh", desc.digest))
