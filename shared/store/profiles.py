"""Learned access profiles: which chunks an image reads first, and when, merged over runs.

A profile belongs to one image manifest digest. Each entry names a chunk by where the TOC puts it
(layer digest, node id, chunk offset) plus its size and digest: node ids follow TOC order, so they
are the same on every node that registered the layer, and the digest lets a replaying daemon check
each entry against its own TOC (a profile is data from the network: it only ever says *what to
fetch*, never what the bytes are; fetched chunks are verified by digest as always).

Runs merge: an entry's ``seen`` counts the runs that read it and ``at_ms`` is its mean first-access
time (milliseconds after the image was first touched). Replay order puts chunks seen in most runs
first, then by typical first access, so a chunk one odd run read does not delay the common ones.

The front never writes LMDB: it records in memory and ships each run to a worker job, which
merges it here (`Profiles.merge_run`); `lazylayer profile pull` stores registry profiles here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import lmdb
import msgpack

from lazylayer.shared.errors import FormatError
from lazylayer.shared.store.corrupt import decoding
from lazylayer.shared.store.env import Store

#: media type of the profile blob and artifactType of the OCI artifact holding it
PROFILE_MEDIA_TYPE = "application/vnd.lazylayer.profile.v1+json"
SCHEMA = "lazylayer.profile.v1"
#: largest profile document accepted from anywhere [bytes]
DEFAULT_MAX_BYTES = 4 << 20

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_NODE_ID = (1 << 32) - 1
_MAX_OFFSET = (1 << 62)
_MAX_CHUNK = 1 << 32
_MAX_MS = 1 << 40


@dataclass(frozen=True, slots=True)
class ProfileChunk:
    """One chunk an image read: where its TOC puts it, and how often and when runs read it."""

    layer: str
    node_id: int
    chunk_offset: int
    size: int
    #: the chunk digest from the TOC ("" for a digest-less legacy chunk)
    digest: str
    #: runs that read it
    seen: int
    #: mean first access, milliseconds after the image was first touched
    at_ms: int

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.layer, self.node_id, self.chunk_offset)


def replay_order(chunks: Iterable[ProfileChunk], runs: int) -> tuple[ProfileChunk, ...]:
    """Chunks seen in most runs first, each group by typical first access."""
    return tuple(sorted(chunks, key=lambda c: (c.seen * 2 <= runs, c.at_ms, c.position)))


@dataclass(frozen=True)
class Profile:
    """The merged profile of one image manifest; ``chunks`` in replay order."""

    manifest: str
    runs: int
    chunks: tuple[ProfileChunk, ...]

    def layers(self) -> list[str]:
        """Layer digests in order of first appearance."""
        return list(dict.fromkeys(c.layer for c in self.chunks))

    def for_layer(self, digest: str) -> list[ProfileChunk]:
        return [c for c in self.chunks if c.layer == digest]

    @property
    def total_bytes(self) -> int:
        """Uncompressed bytes the profile names."""
        return sum(c.size for c in self.chunks)

    def merge(self, other: "Profile") -> "Profile":
        """This profile and ``other`` (of the same manifest) as one: runs and ``seen`` add up,
        first-access times average weighted by ``seen``."""
        if other.manifest != self.manifest:
            raise FormatError(f"profile of {other.manifest} cannot merge into the profile of {self.manifest}")
        merged = {c.position: c for c in self.chunks}
        for c in other.chunks:
            old = merged.get(c.position)
            if old is None or old.digest != c.digest or old.size != c.size:
                merged[c.position] = c  # new, or the TOC says otherwise now: the newer run wins
                continue
            seen = old.seen + c.seen
            merged[c.position] = ProfileChunk(c.layer, c.node_id, c.chunk_offset, c.size, c.digest, seen,
                                              (old.at_ms * old.seen + c.at_ms * c.seen) // seen)
        runs = self.runs + other.runs
        return Profile(self.manifest, runs, replay_order(merged.values(), runs))

    def to_json(self) -> bytes:
        """The canonical document (what is pushed and stored): layers listed once, chunks as
        ``[layer index, node id, chunk offset, size, digest, seen, at_ms]`` in replay order."""
        layers = self.layers()
        index = {digest: i for i, digest in enumerate(layers)}
        doc = {"schema": SCHEMA, "manifest": self.manifest, "runs": self.runs, "layers": layers,
               "chunks": [[index[c.layer], c.node_id, c.chunk_offset, c.size, c.digest, c.seen, c.at_ms]
                          for c in self.chunks]}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, manifest: str | None = None) -> "Profile":
        """Parse and validate a profile document from anywhere (the registry included):
        size-capped, every field typed and in range, no position twice, and (with ``manifest``)
        the profile must be of that manifest. FormatError says what is wrong."""
        if len(raw) > max_bytes:
            raise FormatError(f"profile is {len(raw)} bytes, more than the {max_bytes}-byte limit "
                              "(prefetch.profile_max_size)")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"profile is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise FormatError(f"profile is not a {SCHEMA} document")
        got = doc.get("manifest")
        if not isinstance(got, str) or not _DIGEST.fullmatch(got):
            raise FormatError(f"profile: manifest {got!r:.80} is not a sha256 digest")
        if manifest is not None and got != manifest:
            raise FormatError(f"profile is of image manifest {got}, not {manifest}")
        runs = doc.get("runs")
        if not _int_in(runs, 1, 1 << 31):
            raise FormatError(f"profile: runs {runs!r:.40} is not a positive count")
        layers = doc.get("layers")
        if not isinstance(layers, list) or not all(isinstance(l, str) and _DIGEST.fullmatch(l) for l in layers):
            raise FormatError("profile: layers is not a list of sha256 digests")
        rows = doc.get("chunks")
        if not isinstance(rows, list):
            raise FormatError("profile: chunks is not a list")
        chunks: list[ProfileChunk] = []
        positions: set[tuple[str, int, int]] = set()
        for i, row in enumerate(rows):
            chunk = _chunk(row, layers, runs)
            if chunk is None:
                raise FormatError(f"profile: chunk entry {i} ({row!r:.120}) is malformed or out of range")
            if chunk.position in positions:
                raise FormatError(f"profile: chunk entry {i} names a chunk listed before")
            positions.add(chunk.position)
            chunks.append(chunk)
        return cls(got, runs, replay_order(chunks, runs))


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _chunk(row: object, layers: list[str], runs: int) -> ProfileChunk | None:
    if not isinstance(row, list) or len(row) != 7:
        return None
    layer, node_id, offset, size, digest, seen, at_ms = row
    if not (_int_in(layer, 0, len(layers) - 1) and _int_in(node_id, 1, _MAX_NODE_ID)
            and _int_in(offset, 0, _MAX_OFFSET) and _int_in(size, 0, _MAX_CHUNK) and _int_in(seen, 1, runs)
            and _int_in(at_ms, 0, _MAX_MS) and isinstance(digest, str)
            and (digest == "" or _DIGEST.fullmatch(digest))):
        return None
    return ProfileChunk(layers[layer], node_id, offset, size, digest, seen, at_ms)


@dataclass(frozen=True)
class StoredProfile:
    """A profile as this cache holds it: where it came from and when it last changed."""

    profile: Profile
    #: "recorded" (runs on this node) or "registry REF" (pulled)
    source: str
    updated: float


class Profiles:
    """The ``profiles`` database: manifest digest -> msgpack [source, updated, profile JSON]."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._db = store.db("profiles")

    def get(self, manifest: str) -> StoredProfile | None:
        raw = self.store.read(lambda txn: _copy(txn.get(manifest.encode(), db=self._db)))
        return None if raw is None else _decode(raw)

    def all(self) -> list[StoredProfile]:
        def scan(txn: lmdb.Transaction) -> list[bytes]:
            return [bytes(value) for _, value in txn.cursor(db=self._db)]

        return [_decode(raw) for raw in self.store.read(scan)]

    def put(self, profile: Profile, source: str) -> StoredProfile:
        """Store ``profile`` as it is (replacing any), e.g. one pulled from a registry."""
        stored = StoredProfile(profile, source, time.time())
        self.store.write(lambda txn: txn.put(profile.manifest.encode(), _encode(stored), db=self._db))
        return stored

    def merge_run(self, run: Profile) -> StoredProfile:
        """Merge one recorded run into the stored profile (read and write in one transaction,
        so two workers merging runs of one image never lose one)."""

        def merge(txn: lmdb.Transaction) -> StoredProfile:
            key = run.manifest.encode()
            raw = txn.get(key, db=self._db)
            old = None if raw is None else _decode(bytes(raw))
            stored = StoredProfile(run if old is None else old.profile.merge(run),
                                   "recorded" if old is None else old.source, time.time())
            txn.put(key, _encode(stored), db=self._db)
            return stored

        return self.store.write(merge)

    def remove(self, manifest: str) -> bool:
        return self.store.write(lambda txn: txn.delete(manifest.encode(), db=self._db))

    def for_layer(self, digest: str) -> list[ProfileChunk]:
        """A layer's entries from the stored profile that has run it most (any image: a base
        layer shared by many images benefits from any of their profiles)."""
        best: StoredProfile | None = None
        for stored in self.all():
            if (best is None or stored.profile.runs > best.profile.runs) and stored.profile.for_layer(digest):
                best = stored
        return [] if best is None else best.profile.for_layer(digest)


def _encode(stored: StoredProfile) -> bytes:
    return msgpack.packb([stored.source, stored.updated, stored.profile.to_json()])


def _decode(raw: bytes) -> StoredProfile:
    with decoding("stored profile"):
        source, updated, doc = msgpack.unpackb(raw)
        # stored by a worker or the CLI after validation; no size cap here (merged runs grow)
        return StoredProfile(Profile.from_json(doc, max_bytes=len(doc)), str(source), float(updated))


def _copy(raw: bytes | memoryview | None) -> bytes | None:
    return None if raw is None else bytes(raw)
