"""The fetcher jobs a worker runs: resolve images and layers, fetch chunks, prefetch, background
fetch, check and refresh, the whole verified blob for the layer store's `blob` file (the
contract between the front and the workers), and the cache's
janitor (the front never writes LMDB, so its LRU access batches and cap changes come here).

Why it is shaped like this:
- **Stateless.** Every job carries what it needs (image ref, layer digest and size, the chunk
  descriptors, the running blob hash), so any worker can run any job and a job re-dispatched
  after a worker died runs the same anywhere. What a worker keeps is only what makes it faster:
  one `RegistryClient` per registry/repository (HTTP session, tokens, blob locations) and one
  blob source per layer of an image.
- **Pluggable.** Every byte of a layer comes through the `LayerSource` its handlers chose
  (workers/sources/: registry, descriptor URLs, OCI layout dirs, plug-ins), and its chunks are
  decoded by the decompressor that claimed it (shared/estargz/formats.py). Both choices are
  kept on the layer record, so any worker reads and decodes a layer the same way.
- **Only verified bytes are stored.** Each chunk is decompressed and its sha256 checked whole
  (`decompress_chunk`) before `ChunkStore.put`, which re-checks it; a bad chunk is a
  DigestMismatchError (or FormatError for undecodable data) and nothing of it is stored. Good
  chunks of the same job are still stored, then the first error is raised.
- **Few requests.** Wanted compressed ranges go to the source's `read_ranges` in one call; the
  registry's (`RegistryClient.read_ranges`) coalesces them (`registry.coalesce_gap`) into one
  multi-range request, the URL source into few ranged GETs. A job is split into
  requests of at most ``max_request_bytes`` so a huge prefetch never sits in memory at once.
- **Blocking and thread-safe.** Handlers run in the worker's job threads; the store is opened
  once, after exec, on first use, and LMDB serialises writers. Network and CPU work happen
  before any write transaction begins.
- **Blob digest by pieces.** Background fetch walks the blob in order; the running sha256 state
  (workers/blobhash.py) travels in the reply and comes back with the next piece, so the check
  needs no worker affinity. A mismatch marks the layer FAILED and deletes its cached chunks.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.config import Config
from lazylayer.shared.errors import (CacheFullError, DigestMismatchError, FormatError, LazyLayerError, ProtocolError,
                                     UnverifiedLayerError)
from lazylayer.shared.estargz.formats import TAIL_SIZE, Decompressors
from lazylayer.shared.logs import Every
from lazylayer.shared.estargz.toc import TOCLimits
from lazylayer.shared.store.blobs import blob_path
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.env import Store, StoreOptions, open_store
from lazylayer.shared.store.eviction import Janitor
from lazylayer.shared.store.layers import LayerRecord, Layers, LayerState
from lazylayer.shared.store.metadata import Metadata
from lazylayer.workers.blobhash import PieceHash
from lazylayer.workers.jobparams import WantedChunk, job_param, request_batches, wanted_from_store
from lazylayer.workers.jobs import Handler, Job, JobResult
from lazylayer.workers.profiles import ProfileJobs
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.manifests import parse_platform
from lazylayer.workers.registry.rangesupport import RangeSupport, job_context
from lazylayer.workers.registry.reference import LayoutRef, Reference, parse_image_ref
from lazylayer.workers.registry.stores import ImageStore, RegistryStore, resolve_image_manifest
from lazylayer.workers.sources.base import LayerSource, LayerSpec
from lazylayer.workers.sources.handlers import Sources
from lazylayer.workers.sources.layout import open_layout
from lazylayer.workers.sources.registry import RegistrySource
from lazylayer.workers.wholeblob import StreamBusy, Streams, WholeBody, settle_layer

log = logging.getLogger(__name__)

# Registration's own modules (shared/store/layers.py imports them late, for the front's sake):
# imported with the rest of a worker's, in the forker before it forks, not by the first resolve,
# which on a cold page cache (a host's first start) would read them from disk on its way.
importlib.import_module("lazylayer.shared.store.layerbuild")

#: Compressed bytes one HTTP request of a job may ask for (several chunks coalesce up to it).
MAX_REQUEST_BYTES = 16 << 20
#: Uncompressed bytes a job stores per write transaction after its first chunk (stored alone):
#: a read waiting for one chunk of a large job gets it this soon (daemon/inflight.py).
STORE_SLICE = 1 << 20


@dataclass(frozen=True)
class FetcherSettings:
    store: StoreOptions
    registry: RegistryOptions
    toc_limits: TOCLimits = TOCLimits()
    max_request_bytes: int = MAX_REQUEST_BYTES
    #: the whole config: source and decompressor plug-ins are built with it
    config: Config = Config()

    @classmethod
    def from_config(cls, config: Config, cache_dir: str | None = None) -> "FetcherSettings":
        """``cache_dir`` (the worker's ``--cache-dir``) overrides ``cache.dir``."""
        return cls(
            store=StoreOptions.from_config(config.cache, cache_dir),
            registry=RegistryOptions.from_config(config.registry),
            toc_limits=TOCLimits(config.format.max_toc_bytes, config.format.max_entries),
            config=config,
        )


@dataclass(frozen=True)
class FetchOutcome:
    stored: int
    bytes: int
    error: LazyLayerError | None = None
    #: verified chunks the cache could not take (filesystem full): (data key, bytes), sent back
    unstored: tuple[tuple[bytes, bytes], ...] = ()
    #: the registry sent the whole blob, which goes on streaming into the store
    whole: bool = False


class Fetcher:
    """The job handlers of one worker process. Create it after exec."""

    def __init__(self, settings: FetcherSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._store: Store | None = None
        #: which mirrors serve ranges now: one view for all clients of this worker
        self.range_support = RangeSupport()
        # plug-ins are built here, at worker start: a bad one fails the worker, saying why
        self.sources = Sources(settings.config, self.range_support)
        self.decompressors = Decompressors.load(settings.config.decompressors.order)
        #: blobs arriving whole for a ranged read: other jobs for them wait (workers/wholeblob.py)
        self._streams = Streams()

    def handlers(self) -> dict[str, Handler]:
        return {kind: job_context(self.range_support, kind, handler) for kind, handler in {
            "resolve_image": self.resolve_image,
            "resolve_layer": self.resolve_layer,
            "fetch_chunks": self.fetch_chunks,
            "prefetch": self.prefetch,
            "background_fetch": self.background_fetch,
            "check": self.check,
            "refresh": self.refresh,
            "janitor": self.janitor,
            "fetch_blob": self.fetch_blob,
        }.items()}

    # -- per-process resources -----------------------------------------------------------------

    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings.store)
            return self._store

    def client(self, ref: Reference, fresh: bool = False) -> RegistryClient:
        """The registry client of ``ref``'s repository (profiles and manifests use it too)."""
        return self.sources.registry.client(ref, fresh)

    def image_store(self, ref: Reference | LayoutRef) -> ImageStore:
        if isinstance(ref, LayoutRef):
            return open_layout(ref)
        return RegistryStore(self.client(ref), ref)

    def source(self, ref: str, digest: str, size: int | None = None, *, spec: LayerSpec | None = None,
               choose: bool = False, tail: int = 0) -> LayerSource:
        """The layer's source for ``ref`` (workers/sources/handlers.py `Sources.layer_source`)."""
        return self.sources.layer_source(ref, digest, lambda: Layers(self.store()).get(digest), size, spec=spec,
                                         choose=choose, tail=tail)

    # -- jobs ----------------------------------------------------------------------------------

    def resolve_image(self, job: Job) -> JobResult:
        ref = parse_image_ref(job_param(job.params, "ref", str))
        platform = job_param(job.params, "platform", str, None)
        store = self.image_store(ref)
        manifest = resolve_image_manifest(store, parse_platform(platform) if platform else None)
        diff_ids = _diff_ids(store, manifest.config.digest, len(manifest.layers))
        layers = [{"digest": d.digest, "size": d.size, "media_type": d.media_type, "annotations": d.annotations,
                   "diff_id": diff_id, "urls": list(d.urls)}
                  for d, diff_id in zip(manifest.layers, diff_ids)]
        return JobResult({"ref": str(ref), "manifest_digest": manifest.digest,
                          "config_digest": manifest.config.digest, "layers": layers})

    def resolve_layer(self, job: Job) -> JobResult:
        ref, digest, size = self._layer_params(job)
        toc_digest = job_param(job.params, "toc_digest", str, None)
        allow_unverified = job_param(job.params, "allow_unverified", bool, False)
        require_toc_digest = job_param(job.params, "require_toc_digest", bool, True)
        spec = self._spec(job, ref, digest, size)
        layers = Layers(self.store())
        existing = layers.get(digest)
        if existing is not None and toc_digest is not None and existing.toc_digest != toc_digest:
            existing = self._settle_conflict(spec, toc_digest, existing)
        if existing is not None and toc_digest is not None:
            if not existing.verified:  # its TOC hashes to the annotation: now it is vouched for
                existing = layers.update(digest, verified=True)
        if existing is not None:
            return JobResult(_record_dict(existing))
        if toc_digest is None and require_toc_digest and not allow_unverified:
            raise UnverifiedLayerError(
                f"layer {digest} has no TOC digest annotation: not eStargz/zstd:chunked: "
                "convert it with `lazylayer convert`")
        # probes (the size must be the manifest's), asking for the tail that opening the TOC reads
        source = self.source(ref, digest, spec=spec, choose=True, tail=TAIL_SIZE)
        # The TOC streams into the registration: a large one is never held whole (tocstream.py).
        decoder, toc = self.decompressors.open_toc(source, spec.media_type, toc_digest=toc_digest,
                                                   limits=self.settings.toc_limits)
        record = layers.register(digest, size, toc, verified=toc_digest is not None,
                                 allow_unverified=allow_unverified)
        if not record.decompressor:  # not when another process registered it meanwhile
            record = layers.update(digest, source=source.handler, source_location=source.location,
                                   decompressor=decoder, media_type=spec.media_type, urls=spec.urls)
        log.info("layer %s registered (%d nodes, %d chunks) from %s %s, %s", digest, record.node_count,
                 record.chunk_count, source.handler, source.location, decoder)
        return JobResult(_record_dict(record))

    @staticmethod
    def _spec(job: Job, ref: str, digest: str, size: int) -> LayerSpec:
        urls = job_param(job.params, "urls", list, [])
        if not all(isinstance(u, str) for u in urls):
            raise ProtocolError("job parameter 'urls' must be a list of strings")
        return LayerSpec(ref, digest, size, job_param(job.params, "media_type", str, ""), tuple(urls))

    def _settle_conflict(self, spec: LayerSpec, toc_digest: str, existing: LayerRecord) -> LayerRecord | None:
        """Two manifests disagree on the TOC of one blob digest. A blob can back only one TOC, and
        only the whole blob's sha256 proves it is the blob: a registration whose blob was checked
        (FETCHED) stands. Otherwise this source's whole blob is checked now and its TOC hashed:
        if that is the registered TOC, the newcomer's annotation is wrong and refused (the layer
        stays as it is, mounted or not); if it is the newcomer's, the registration came from a
        source serving another blob under this digest and is dropped (None: register anew).
        Chunks may stay either way: they are keyed by their own digests."""
        ref, digest = spec.ref, spec.digest
        if existing.state is LayerState.FETCHED:
            raise DigestMismatchError(f"TOC of layer {digest} (its blob was verified with the TOC registered)",
                                      toc_digest, existing.toc_digest)
        log.warning("layer %s: %s names TOC %s but %s is registered, unverified; checking the whole blob",
                    digest, ref, toc_digest, existing.toc_digest)
        with tempfile.NamedTemporaryFile(dir=self.store().options.path) as sink:
            self.source(ref, digest, spec=spec, choose=True).download(sink)  # DigestMismatchError: it lies
            sink.flush()
            with FileSource(sink.name) as blob:
                actual = self.decompressors.toc_digest_of(blob, spec.media_type, self.settings.toc_limits)
        if actual != toc_digest:
            raise DigestMismatchError(f"TOC of layer {digest} (the genuine blob's TOC is the registered one)",
                                      toc_digest, actual)
        Layers(self.store()).remove(digest)
        log.warning("layer %s: the blob from %s is genuine and backs its TOC; the registration with TOC %s "
                    "is dropped", digest, ref, existing.toc_digest)
        return None

    def fetch_chunks(self, job: Job) -> JobResult:
        ref, digest = job_param(job.params, "ref", str), job_param(job.params, "digest", str)
        wanted = [WantedChunk.from_wire(c, digest) for c in job_param(job.params, "chunks", list)]
        chunk_store = ChunkStore(self.store())
        replaced = [d for d in job_param(job.params, "replace", list, []) if chunk_store.drop_if_corrupt(str(d))]
        if replaced:
            log.warning("layer %s: %d cached chunk(s) no longer matched their digest; dropped, fetching again",
                        digest, len(replaced))
        outcome = self._fetch(ref, digest, wanted)
        self._account(digest, outcome)
        # Chunks the cache could not take go back with the reply, so the read is still served.
        return JobResult({"stored": outcome.stored, "bytes": outcome.bytes,
                          "unstored": [key for key, _ in outcome.unstored], "whole": outcome.whole},
                         [data for _, data in outcome.unstored])

    def prefetch(self, job: Job) -> JobResult:
        ref, digest, _ = self._layer_params(job)
        prefetch_size = job_param(job.params, "prefetch_size", int, 0)
        layers = Layers(self.store())
        record = layers.require(digest)
        end = record.prefetch_end if record.prefetch_end is not None else min(max(prefetch_size, 0), record.blob_size)
        if end == 0:
            layers.modify(digest, lambda r: _advance(r, LayerState.READY, prefetch_size=0))
            return JobResult({"bytes": 0, "chunks": 0})
        layers.modify(digest, lambda r: _advance(r, LayerState.PREFETCHING))
        wanted = [wanted_from_store(c)
                  for c in Metadata(self.store()).prefetch_chunks(record.layer_id, end, record.prefetch_nodes)]
        try:
            outcome = self._fetch(ref, digest, wanted)
            if outcome.error is not None:
                raise outcome.error
        except LazyLayerError as exc:
            reason = str(exc)
            layers.modify(digest, lambda r: _advance(r, LayerState.REGISTERED, last_error=reason))
            raise
        layers.add_fetched(digest, outcome.bytes)
        layers.modify(digest, lambda r: _advance(r, LayerState.READY, prefetch_size=end))
        return JobResult({"bytes": outcome.bytes, "chunks": outcome.stored})

    def background_fetch(self, job: Job) -> JobResult:
        ref, digest, size = self._layer_params(job)
        start, end = job_param(job.params, "start", int), job_param(job.params, "end", int)
        state = job_param(job.params, "state", bytes, None)
        if not 0 <= start < end <= size or (state is None) != (start == 0):
            raise ProtocolError(f"background piece [{start}, {end}) of a {size}-byte blob "
                                f"{'without' if state is None else 'with'} a running hash")
        wanted = [WantedChunk.from_wire(c, digest) for c in job_param(job.params, "chunks", list)]
        outside = [c for c in wanted if c.blob_offset < start or c.blob_end > end]
        if outside:
            raise ProtocolError(f"chunk at blob offset {outside[0].blob_offset} is outside the piece [{start}, {end})")
        data = self.source(ref, digest, size).read_ranges([(start, end - start)])[0]
        running = PieceHash(state).update(data)
        missing = self._missing(wanted)
        stored, error = self._store_chunks(digest, missing, lambda c: data[c.blob_offset - start:c.blob_end - start])
        outcome = FetchOutcome(stored, len(data), error)
        complete = end == size
        if complete:
            actual = "sha256:" + running.hexdigest()
            if actual != digest:
                self._distrust(digest, f"blob digest mismatch: got {actual}")
                raise DigestMismatchError(f"blob of layer {digest}", digest, actual)
        self._account(digest, outcome)
        if complete:
            Layers(self.store()).update(digest, state=LayerState.FETCHED, fetched_bytes=size)
        return JobResult({"bytes": len(data), "chunks": stored, "complete": complete,
                          "state": None if complete else running.state(),
                          "stored_keys": [c.data_key for c in missing]})

    def check(self, job: Job) -> JobResult:
        ref, digest, size = self._layer_params(job)
        self.source(ref, digest, size).check()
        return JobResult({"ok": True})

    def refresh(self, job: Job) -> JobResult:
        """The source forgets what it learnt (registry: no cached redirect URL, no tokens), the
        handlers are asked again in order, and the blob must answer."""
        ref, digest, size = self._layer_params(job)
        try:
            self.source(ref, digest, size).refresh()
        except LazyLayerError as exc:  # the next handler in the order may serve it
            log.warning("layer %s: refreshing its source failed: %s", digest, exc)
        source = self.source(ref, digest, size, choose=True)
        source.check()
        record = Layers(self.store()).get(digest)
        if record is not None and (source.handler, source.location) != (record.source, record.source_location):
            Layers(self.store()).update(digest, source=source.handler, source_location=source.location)
        return JobResult({"ok": True, "source": source.handler})

    def fetch_blob(self, job: Job) -> JobResult:
        """The whole compressed blob into ``blob_path(cache dir, digest)``: streamed to a
        temporary file while hashed, renamed into place only when the digest matched, so the
        file, once it exists, is the verified blob."""
        ref, digest, size = self._layer_params(job)
        final = blob_path(self.store().options.path, digest)
        if os.path.exists(final):
            return JobResult({"bytes": 0, "path": final})
        os.makedirs(os.path.dirname(final), exist_ok=True)
        partial = f"{final}.{os.getpid()}.{threading.get_ident()}.partial"
        try:
            with open(partial, "wb") as out:
                fetched = self.source(ref, digest, size).download(out)
            os.rename(partial, final)
            # downloaded bytes like any other: `status` and metrics show the layer fetched
            Layers(self.store()).add_fetched(digest, fetched, read_time=time.time())
        except DigestMismatchError:
            self._distrust(digest, "blob digest mismatch while fetching the whole blob")
            raise
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return JobResult({"bytes": fetched, "path": final})

    def janitor(self, job: Job) -> JobResult:
        """Apply the front's chunk accesses (LRU order) and, with ``budget``, make it the cap of
        every process; then trim to the low watermark and free dead readers' slots."""
        accesses = [(bytes(key), int(when)) for key, when in job_param(job.params, "accesses", list, [])]
        budget = job_param(job.params, "budget", int, None)
        if budget is not None and budget <= 0:
            raise ProtocolError(f"cache budget {budget} is not a positive byte count")
        chunks = ChunkStore(self.store())
        report = Janitor(chunks).run_once(accesses, budget)
        return JobResult(asdict(report) | {"budget": chunks.budget()})

    # -- helpers -------------------------------------------------------------------------------

    def _layer_params(self, job: Job) -> tuple[str, str, int]:
        """(ref as the front names it, layer digest, blob size); the ref must parse."""
        ref = job_param(job.params, "ref", str)
        parse_image_ref(ref)
        return ref, job_param(job.params, "digest", str), job_param(job.params, "size", int)

    def _missing(self, wanted: list[WantedChunk]) -> list[WantedChunk]:
        """Chunks not in the store yet, each key once, in blob order (one read txn)."""
        index = self.store().db("chunk_index")

        def scan(txn: Any) -> list[WantedChunk]:
            seen: set[bytes] = set()
            out = []
            for chunk in sorted(wanted, key=lambda c: (c.blob_offset, c.inner_offset)):
                if chunk.data_key not in seen and txn.get(chunk.data_key, db=index) is None:
                    seen.add(chunk.data_key)
                    out.append(chunk)
            return out

        return self.store().read(scan)

    def _fetch(self, ref: str, digest: str, wanted: list[WantedChunk]) -> FetchOutcome:
        """Fetch, verify and store the missing ones among ``wanted``; the first chunk error is
        returned with the outcome (after every good chunk was stored), transport errors raise."""
        missing = self._missing(wanted)
        if not missing:
            return FetchOutcome(0, 0)
        source = self.source(ref, digest)
        stored = fetched = 0
        whole = False
        first_error: LazyLayerError | None = None
        unstored: list[tuple[bytes, bytes]] = []
        batches = request_batches(missing, self.settings.max_request_bytes)
        while batches:
            batch = batches.pop(0)
            while batch and self._streams.wait(digest, lambda: not self._missing(batch)):  # streaming whole
                batch = self._missing(batch)
            if not batch:
                continue
            ranges = sorted({(c.blob_offset, c.blob_end) for c in batch})
            try:
                datas, stream = self._read_keeping_whole_blob(source, digest, ranges)
            except StreamBusy:  # a whole blob this worker streams already: wait for it, then look again
                batches.insert(0, batch)
                continue
            whole = whole or stream.started
            by_range = dict(zip(ranges, datas))
            fetched += sum(len(d) for d in datas)
            try:
                count, error = self._store_chunks(digest, batch, lambda c: by_range[(c.blob_offset, c.blob_end)],
                                                  unstored)
            finally:
                settled = stream.release()
            if isinstance(settled, DigestMismatchError):  # the blob is not what it claims: nothing stays
                raise settled
            stored += count
            first_error = first_error or error
        return FetchOutcome(stored, fetched, first_error, tuple(unstored), whole)

    def _read_keeping_whole_blob(self, source: LayerSource, digest: str,
                                 ranges: list[tuple[int, int]]) -> tuple[list[bytes], WholeBody]:
        """`read_ranges`; a whole-blob answer (only a registry gives one) also stores every other missing chunk of the layer
        as it streams on and, its digest checked, makes the layer FETCHED (a mismatch
        distrusts the layer) once the caller released it. Whether a blob came whole goes back
        in the reply (``whole``)."""
        layers = Layers(self.store())
        own = set(ranges)

        def layer_chunks() -> list[WantedChunk]:
            record = layers.get(digest)
            if record is None:  # still resolving: only the wanted ranges matter
                return []
            every = Metadata(self.store()).prefetch_chunks(record.layer_id, record.blob_size + 1)
            return self._missing([wanted_from_store(c) for c in every if (c.blob_offset, c.blob_end) not in own])

        def store(got: list[tuple[Any, bytes]]) -> None:
            _, error = self._store_chunks(digest, [c for c, _ in got], dict(got).__getitem__)
            if error is not None:
                log.warning("layer %s: a chunk of the whole-blob answer was bad: %s", digest, error)

        whole = WholeBody(self._streams, digest, layer_chunks, store,
                          lambda error: settle_layer(layers, digest, error, self._distrust))
        pairs = [(lo, hi - lo) for lo, hi in ranges]
        try:
            if isinstance(source, RegistrySource):
                return source.read_ranges(pairs, whole_body=whole), whole
            return source.read_ranges(pairs), whole
        except BaseException:
            whole.release()
            raise

    def _store_chunks(self, digest: str, chunks: list[WantedChunk], compressed: Callable[[WantedChunk], bytes],
                      unstored: list[tuple[bytes, bytes]] | None = None) -> tuple[int, LazyLayerError | None]:
        """Decompress and verify each chunk and store them in slices as they come: the first
        chunk alone, then every `STORE_SLICE` bytes, so that a read waiting for one of them is
        served before the rest of the job is done (daemon/inflight.py). The first chunk error
        is returned. A chunk the cache filesystem refuses (full) is kept in ``unstored`` when
        the caller serves it."""
        first_error: LazyLayerError | None = None
        verified: list[tuple[WantedChunk, bytes]] = []
        stored = pending = 0
        first = True
        # the decompressor the layer was registered with ("": a record older than the name)
        decoder = Layers(self.store()).require(digest).decompressor if chunks else ""
        for chunk in chunks:
            try:
                payload = self.decompressors.decompress_chunk(
                    decoder, compressed(chunk), chunk.toc_chunk(), allow_unverified=not chunk.digest)
            except (DigestMismatchError, FormatError) as exc:
                log.warning("layer %s: %s", digest, exc)
                first_error = first_error or exc
                continue
            verified.append((chunk, payload))
            pending += len(payload)
            if first or pending >= STORE_SLICE:
                stored += self._put_verified(digest, verified, unstored)
                verified, pending, first = [], 0, False
        if verified:
            stored += self._put_verified(digest, verified, unstored)
        return stored, first_error

    def _put_verified(self, digest: str, verified: list[tuple[WantedChunk, bytes]],
                      unstored: list[tuple[bytes, bytes]] | None) -> int:
        """One write transaction for the whole batch; when the cache filesystem refuses it,
        chunk by chunk, so what fits is stored and the rest goes to ``unstored``."""
        chunk_store = ChunkStore(self.store())
        batch = [(chunk, payload) for chunk, payload in verified if chunk.digest]
        one_by_one = [(chunk, payload) for chunk, payload in verified if not chunk.digest]
        try:
            chunk_store.put_many([(chunk.digest, payload) for chunk, payload in batch], hashed_by_caller=True)
            stored = len(batch)
        except CacheFullError:
            stored, one_by_one = 0, verified
        for chunk, payload in one_by_one:
            try:
                if chunk.digest:
                    chunk_store.put_many([(chunk.digest, payload)], hashed_by_caller=True)
                else:
                    chunk_store.put_unverified(digest, chunk.blob_offset, chunk.inner_offset, payload)
                stored += 1
            except CacheFullError as exc:
                _warn_cache_full(exc, served=unstored is not None)
                if unstored is not None:
                    unstored.append((chunk.data_key, payload))
        return stored

    def _account(self, digest: str, outcome: FetchOutcome) -> None:
        """Count what was fetched on the layer record; record and raise a chunk error."""
        layers = Layers(self.store())
        if outcome.bytes:
            layers.add_fetched(digest, outcome.bytes, read_time=time.time())
        if outcome.error is not None:
            layers.set_error(digest, str(outcome.error))
            raise outcome.error

    def _distrust(self, digest: str, reason: str) -> None:
        """The blob is not what its digest says: the layer is FAILED and no chunk it gave us stays."""
        layers = Layers(self.store())
        record = layers.update(digest, state=LayerState.FAILED, last_error=reason)
        chunk_store = ChunkStore(self.store())
        removed = sum(chunk_store.delete(c.data_key)
                      for c in Metadata(self.store()).prefetch_chunks(record.layer_id, record.blob_size + 1))
        log.error("layer %s: %s; marked failed, %d cached chunk(s) removed", digest, reason, removed)


_cache_full_warning = Every(60.0)


def _warn_cache_full(exc: CacheFullError, served: bool) -> None:
    """One warning a minute while the cache filesystem is full (every chunk would log one)."""
    if _cache_full_warning.due():
        log.warning("%s; %s", exc, "reads are served without caching" if served else "chunks not cached")


def _diff_ids(store: ImageStore, config_digest: str, count: int) -> list[str | None]:
    """The layers' DiffIDs from the image config (verified against its digest), for the layer
    store's `info`; Nones, with a warning, when the config does not list one per layer."""
    raw = store.blob_bytes(config_digest)
    try:
        diff_ids = json.loads(raw)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        diff_ids = None
    if not isinstance(diff_ids, list) or len(diff_ids) != count or not all(isinstance(d, str) for d in diff_ids):
        log.warning("image config %s of %s lists no DiffID per layer; info files will lack diff-digest",
                    config_digest, store.name)
        return [None] * count
    return diff_ids


def _record_dict(record: LayerRecord) -> dict[str, Any]:
    data = asdict(record)
    data["state"] = record.state.value
    return data


def fetcher_handlers(config: Config, cache_dir: str | None = None) -> dict[str, Handler]:
    """The fetcher jobs plus the profile jobs (workers/profiles.py), sharing one store and clients."""
    fetcher = Fetcher(FetcherSettings.from_config(config, cache_dir))
    return {**fetcher.handlers(), **ProfileJobs(fetcher).handlers()}


def _advance(record: LayerRecord, state: LayerState, **changes: Any) -> LayerRecord:
    """Prefetch's state moves (registered <-> prefetching -> ready) never undo a settled layer:
    a background fetch may have finished (FETCHED) or failed it (FAILED) meanwhile."""
    if record.state in (LayerState.FETCHED, LayerState.FAILED):
        return replace(record, **changes)
    return replace(record, state=state, **changes)
