"""Learned prefetch on the front: record which chunks an image reads first, replay its profile.

Recording: when an image is resolved a `Recording` starts for its manifest digest (once per
daemon run). Every read of one of its layers notes ``(layer id, node id, offset) -> (layer
digest, size, ms since the image was resolved)`` the first time that offset is read: one dict
lookup and insert, no syscall, no LMDB (``time.monotonic`` is a vDSO call). The recording ends
after ``profile_quiet`` seconds without a new read or ``profile_window`` after it began (or when
`profile push` or a stopping daemon flushes it); its reads are then turned into chunks (a thread
walks the file-chunk table) and handed to a worker job (`profile_record`), which merges the run
into the stored profile: the front never writes LMDB.

Replay: once every layer of an image is resolved (nothing reads an image before its last layer is
there, and replay jobs beside the TOC registrations only slow them), the entries its profile
names for each layer are checked against this cache's TOC (same node, same chunk offset, size
and digest; the rest is skipped and logged once), the cached ones dropped, and the others fetched
at PREFETCH priority in replay order by the prefetch machinery (`Remote.fetch_pieces`): few large
chunk jobs, as many as there are worker slots, each coalesced by its worker into multi-range
requests; a demand read of a chunk in flight joins its job. Chunks are verified by digest as every fetched chunk is: a
profile only says what to fetch. An image without a profile of its own uses, per layer, the
entries of any stored profile that names the layer (a shared base layer benefits everywhere).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import trio

from lazylayer.daemon.remote import PREFETCH_PIECE, Remote, ResolvedImage
from lazylayer.shared.config import Config
from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.store.layers import LayerRecord
from lazylayer.shared.store.metadata import FileChunk, NodeRef
from lazylayer.shared.store.profiles import Profile, ProfileChunk, Profiles, replay_order

log = logging.getLogger(__name__)

#: distinct read offsets one recording keeps (bounds its memory) [reads]
MAX_RECORDED_READS = 50_000
#: largest replay job: about what a worker reads in one request [bytes]
MAX_REPLAY_PIECE = 16 << 20
#: how long a registry lookup that found no profile is not repeated [s]
REGISTRY_MISS_TTL = 120.0
#: longest a layer's replay waits for the image's other layers to be resolved [s]
REPLAY_WAIT = 30.0
#: layer replays `status` lists (the latest)
SHOWN_REPLAYS = 64


@dataclass(frozen=True)
class ProfileSettings:
    """From config [prefetch] profile knobs."""

    mode: str = "local"
    record: bool = True
    quiet: float = 30.0
    window: float = 300.0
    max_bytes: int = 4 << 20

    @classmethod
    def from_config(cls, config: Config) -> "ProfileSettings":
        p = config.prefetch
        return cls(p.profiles, p.profile_record, p.profile_quiet, p.profile_window, p.profile_max_size)


class Recording:
    """First reads of one image's layers during its recording window."""

    __slots__ = ("manifest", "layers", "started", "last_new", "reads")

    def __init__(self, manifest: str, layers: frozenset[str], started: float) -> None:
        self.manifest = manifest
        self.layers = layers
        self.started = started
        self.last_new = started
        #: (layer id, node id, offset) -> (layer digest, size, ms after start), in first-read order
        self.reads: dict[tuple[int, int, int], tuple[str, int, int]] = {}

    def note(self, key: tuple[int, int, int], digest: str, size: int, now: float) -> None:
        if key not in self.reads and len(self.reads) < MAX_RECORDED_READS:
            self.reads[key] = (digest, size, int((now - self.started) * 1000))
            self.last_new = now

    def over(self, now: float, quiet: float, window: float) -> bool:
        return now - self.started >= window or (bool(self.reads) and now - self.last_new >= quiet)

    def to_profile(self, remote: Remote) -> Profile | None:
        """The run as a one-run profile: each read offset becomes the chunks it covered, each
        chunk once, at its first read (blocking: LMDB reads; run it in a thread)."""
        meta = remote.meta

        def scan(txn: Any) -> list[ProfileChunk]:
            out: dict[tuple[str, int, int], ProfileChunk] = {}
            for (layer_id, node_id, offset), (digest, size, at_ms) in self.reads.items():
                for c in meta.chunks_covering(NodeRef(layer_id, node_id), offset, size, txn):
                    out.setdefault((digest, node_id, c.chunk_offset),
                                   ProfileChunk(digest, node_id, c.chunk_offset, c.size, c.digest, 1, at_ms))
            return list(out.values())

        chunks = remote.store.read(scan)
        return Profile(self.manifest, 1, replay_order(chunks, 1)) if chunks else None


@dataclass
class ReplayState:
    """One layer's replay, for `status`."""

    manifest: str
    layer: str
    chunks: int = 0
    skipped: int = 0
    fetched: int = 0
    state: str = "running"
    error: str = ""


@dataclass(frozen=True)
class ReplayPlan:
    chunks: list[FileChunk]
    skipped: int
    uncached: list[FileChunk]


class Profiling:
    """The front's learned prefetch: the recordings under way and the replays. Trio loop only."""

    def __init__(self, remote: Remote, settings: ProfileSettings) -> None:
        self.remote = remote
        self.settings = settings
        self._active: dict[str, Recording] = {}
        self._by_layer: dict[str, list[Recording]] = {}
        self._recorded: set[str] = set()
        self._registry_misses: dict[str, float] = {}
        #: registry lookups under way, by manifest
        self._lookups: dict[str, trio.Event] = {}
        #: where lookups started at image resolution run (`run`'s)
        self._nursery: trio.Nursery | None = None
        #: per manifest, its layers not resolved yet, and an event set once none is left
        self._unresolved: dict[str, tuple[set[str], trio.Event]] = {}
        self._warned: set[tuple[str, str]] = set()
        self.replays: deque[ReplayState] = deque(maxlen=SHOWN_REPLAYS)
        self.runs_shipped = 0

    # -- recording -----------------------------------------------------------------------------

    def image_resolved(self, image: ResolvedImage) -> None:
        """Start recording ``image`` unless it was recorded in this run already."""
        manifest = image.manifest_digest
        if manifest not in self._unresolved:
            self._unresolved[manifest] = ({l.digest for l in image.layers}, trio.Event())
            if self.settings.mode == "registry" and self._nursery is not None:
                self._nursery.start_soon(self._registry_lookup, image.ref, manifest)
        if not self.settings.record or manifest in self._recorded:
            return
        self._recorded.add(manifest)
        recording = Recording(manifest, frozenset(l.digest for l in image.layers), time.monotonic())
        self._active[manifest] = recording
        for digest in recording.layers:
            self._by_layer.setdefault(digest, []).append(recording)

    def note(self, digest: str, node: NodeRef, offset: int, size: int) -> None:
        """A read of a layer (the read path: keep it cheap)."""
        recordings = self._by_layer.get(digest)
        if recordings:
            now = time.monotonic()
            key = (node.layer_id, node.node_id, offset)
            for recording in recordings:
                recording.note(key, digest, size, now)

    def _stop(self, recording: Recording) -> None:
        self._active.pop(recording.manifest, None)
        for digest in recording.layers:
            others = [r for r in self._by_layer.get(digest, ()) if r is not recording]
            if others:
                self._by_layer[digest] = others
            else:
                self._by_layer.pop(digest, None)

    async def run(self) -> None:
        """Ship each recording whose window closed, and run the registry lookups started at
        image resolution (the daemon's nursery runs this)."""
        async with trio.open_nursery() as self._nursery:
            while True:
                await trio.sleep(min(1.0, self.settings.quiet / 4))
                await self._ship_closed()

    async def _ship_closed(self) -> None:
        now = time.monotonic()
        for recording in [r for r in self._active.values() if r.over(now, self.settings.quiet, self.settings.window)]:
            self._stop(recording)
            await self._ship_or_log(recording)

    async def flush(self, manifest: str) -> dict[str, Any]:
        """End the recording of ``manifest`` now and store it (before `profile push`)."""
        recording = self._active.get(manifest)
        if recording is None:
            return {"manifest": manifest, "recorded": False}
        self._stop(recording)
        return {"manifest": manifest, "recorded": True, **await self._ship(recording)}

    async def flush_all(self) -> None:
        """Store every recording that read something (the daemon is stopping)."""
        for recording in [r for r in self._active.values() if r.reads]:
            self._stop(recording)
            await self._ship_or_log(recording)

    async def _ship_or_log(self, recording: Recording) -> None:
        try:
            await self._ship(recording)
        except LazyLayerError as exc:
            log.warning("profile of %s: recording not stored: %s", recording.manifest, exc)

    async def _ship(self, recording: Recording) -> dict[str, Any]:
        run = await trio.to_thread.run_sync(recording.to_profile, self.remote)
        if run is None:
            log.info("profile of %s: nothing was read while recording", recording.manifest)
            return {"chunks": 0, "runs": 0}
        result = await self.remote.record_profile(recording.manifest, run.to_json())
        self.runs_shipped += 1
        log.info("profile of %s: run of %d chunks recorded (%d runs, %d chunks in the profile)",
                 recording.manifest, len(run.chunks), result["runs"], result["chunks"])
        return {"chunks": result["chunks"], "runs": result["runs"]}

    # -- replay --------------------------------------------------------------------------------

    async def replay(self, ref: str, manifest: str, layer: LayerRecord) -> None:
        """Fetch what the profile names for ``layer`` (see the module docstring). Failures only
        log: the reads that need a chunk fetch it themselves."""
        if self.settings.mode == "off":
            return
        await self._all_resolved(manifest, layer.digest)
        try:
            entries = await self._entries(ref, manifest, layer.digest)
        except LazyLayerError as exc:
            log.warning("profile of %s: lookup failed: %s", manifest, exc)
            return
        if not entries:
            return
        state = ReplayState(manifest, layer.digest)
        self.replays.append(state)
        try:
            plan = await trio.to_thread.run_sync(self._plan, layer.layer_id, entries)
            state.chunks, state.skipped = len(plan.chunks), plan.skipped
            if plan.skipped and (manifest, layer.digest) not in self._warned:
                self._warned.add((manifest, layer.digest))
                log.warning("profile of %s: %d of %d chunk(s) named for layer %s are not in its TOC; skipped",
                            manifest, plan.skipped, len(entries), layer.digest)
            if plan.uncached:
                self.remote.replay_started(c.data_key for c in plan.uncached)
                pieces = _ordered_pieces(plan.uncached, self._piece_size(plan.uncached))
                state.fetched = await self.remote.fetch_pieces(ref, layer, pieces)
            state.state = "done"
            log.info("profile of %s: layer %s: %d chunk(s) named, %d fetched (%d compressed bytes)",
                     manifest, layer.digest, len(plan.chunks), len(plan.uncached), state.fetched)
        except LazyLayerError as exc:
            state.state, state.error = "failed", str(exc)
            log.warning("profile of %s: replay of layer %s: %s", manifest, layer.digest, exc)

    async def _all_resolved(self, manifest: str, digest: str) -> None:
        """Wait until every layer of the image is resolved (at most REPLAY_WAIT): nothing
        reads an image before its last layer is there (an overlay mount needs them all), and a
        replay running beside the other layers' TOC fetches and registrations only slows them."""
        unresolved = self._unresolved.get(manifest)
        if unresolved is None:
            return
        pending, done = unresolved
        pending.discard(digest)
        if not pending:
            done.set()
        with trio.move_on_after(REPLAY_WAIT):
            await done.wait()

    async def _entries(self, ref: str, manifest: str, digest: str) -> list[ProfileChunk]:
        """The layer's entries: from the image's own profile (local, else the registry when
        configured), else from any stored profile naming the layer."""
        if self.settings.mode == "registry":
            await self._registry_lookup(ref, manifest)
        profiles = Profiles(self.remote.store)
        stored = await trio.to_thread.run_sync(profiles.get, manifest)
        if stored is not None:
            return stored.profile.for_layer(digest)
        return await trio.to_thread.run_sync(profiles.for_layer, digest)

    async def _registry_lookup(self, ref: str, manifest: str) -> None:
        """Have the registry's profile of ``manifest`` stored here unless one is: one lookup at
        a time per image (started as the image is resolved, so it runs beside the layers' TOC
        fetches), none again for REGISTRY_MISS_TTL after it found none or none usable."""
        running = self._lookups.get(manifest)
        if running is not None:
            await running.wait()
            return
        done = self._lookups[manifest] = trio.Event()
        try:
            missed = self._registry_misses.get(manifest)
            if missed is not None and trio.current_time() - missed < REGISTRY_MISS_TTL:
                return
            if await trio.to_thread.run_sync(Profiles(self.remote.store).get, manifest) is not None:
                return
            if not await self.remote.fetch_profile(ref, manifest, self.settings.max_bytes):
                self._registry_misses[manifest] = trio.current_time()
        except LazyLayerError as exc:  # none usable: the layers replay without (it runs in no caller's task)
            self._registry_misses[manifest] = trio.current_time()
            log.warning("profile of %s: registry lookup failed: %s", manifest, exc)
        finally:
            del self._lookups[manifest]
            done.set()

    def _plan(self, layer_id: int, entries: list[ProfileChunk]) -> ReplayPlan:
        """Each entry checked against this layer's TOC rows (one read txn), in replay order."""
        meta, index = self.remote.meta, self.remote.store.db("chunk_index")

        def scan(txn: Any) -> ReplayPlan:
            chunks: list[FileChunk] = []
            uncached: list[FileChunk] = []
            skipped = 0
            for entry in entries:
                found = meta.chunks_covering(NodeRef(layer_id, entry.node_id), entry.chunk_offset, 1, txn)
                chunk = found[0] if found else None
                if (chunk is None or chunk.chunk_offset != entry.chunk_offset or chunk.digest != entry.digest
                        or chunk.size != entry.size):
                    skipped += 1
                    continue
                chunks.append(chunk)
                if txn.get(chunk.data_key, db=index) is None:
                    uncached.append(chunk)
            return ReplayPlan(chunks, skipped, uncached)

        return self.remote.store.read(scan)

    def _piece_size(self, chunks: list[FileChunk]) -> int:
        """About one job per worker slot, within [PREFETCH_PIECE, MAX_REPLAY_PIECE]."""
        slots = sum(w.capacity for w in self.remote.pool.status().workers) or 1
        total = sum(c.blob_end - c.blob_offset for c in chunks)
        return min(MAX_REPLAY_PIECE, max(PREFETCH_PIECE, math.ceil(total / slots)))

    def status(self) -> dict[str, Any]:
        tally = self.remote.replayed
        now = time.monotonic()
        return {
            "mode": self.settings.mode,
            "recording": [{"manifest": r.manifest, "reads": len(r.reads), "age": now - r.started}
                          for r in self._active.values()],
            "runs_recorded": self.runs_shipped,
            "replays": [asdict(state) for state in self.replays],
            "prefetched": tally.prefetched, "hits": tally.hits, "waste": tally.waste,
        }


def _ordered_pieces(chunks: list[FileChunk], piece_size: int) -> list[list[FileChunk]]:
    """Consecutive runs of ``chunks`` (replay order kept) of about ``piece_size`` compressed bytes."""
    pieces: list[list[FileChunk]] = []
    size = piece_size
    for chunk in chunks:
        if size >= piece_size:
            pieces.append([])
            size = 0
        pieces[-1].append(chunk)
        size += chunk.blob_end - chunk.blob_offset
    return pieces
