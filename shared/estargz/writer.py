"""The eStargz writer: a directory or a layer tar stream in, an eStargz blob out.

Layout (reference §1.1-1.4): the blob is a run of gzip members — one starting at offset 0, one at
the payload of every non-empty regular file and at every chunk boundary inside it (the padding
and the next entries' tar headers ride in that member), one holding the TOC tar entry
``stargz.index.json`` plus the end-of-archive blocks, then the 51-byte footer. Decompressed, the
blob is an ordinary tar (``tar -tzf`` lists it), whose sha256 is the DiffID.

How it is built:

1. the input becomes an `EntryList` (tarinput / dirinput) and is put in blob order (entries:
   prefetch list first, landmark, the rest);
2. `_plan` cuts the uncompressed stream into `Member`s and remembers which members hold which
   file's chunks;
3. members are compressed — in worker processes for large inputs, each taking a run of whole
   members of about ``part_size`` bytes. Members are independent, so the blob is byte-identical
   whatever the number of workers (upstream's depends on GOMAXPROCS). Meanwhile the parent
   hashes the uncompressed stream (DiffID, digests of multi-chunk files: sha256 does not combine
   across processes). Workers are started with ``spawn`` (no fork of a process that may hold
   threads, zmq or LMDB state), so a script calling the writer needs the usual
   ``if __name__ == "__main__":`` guard;
4. offsets are the running sum of compressed member sizes; the TOC is built from them and
   written with the footer.

Limits: TOC ``modtime`` is RFC 3339 with whole seconds and a four-digit year, so an mtime outside
what `toc.format_modtime` renders that way is refused (the tar header could hold it, the TOC
cannot); sub-second mtimes are kept in the tar and rounded in the TOC, as upstream does. Names,
link targets, user/group names and xattr names that are not UTF-8 (the TOC is JSON text) keep
their bytes in the tar and get one U+FFFD per undecodable byte in the TOC, which is what
upstream's Go encoding/json writes; `ConvertResult.renamed` lists those entries, and
``strict_names`` refuses them instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any, BinaryIO, Protocol

from lazylayer.shared.errors import ConfigError, FormatError, LazyLayerError
from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazylayer.shared.estargz.compress import (
    Member, MemberResult, compress_members, compress_members_to_file, member_pieces,
)
from lazylayer.shared.estargz.dirinput import read_dir
from lazylayer.shared.estargz.entries import EntryList, SourceEntry
from lazylayer.shared.estargz.footer import estargz_footer
from lazylayer.shared.estargz.tarinput import XATTR_PAX_PREFIX, read_tar
from lazylayer.shared.estargz.toc import (
    PREFETCH_LANDMARK, TOC_TAR_NAME, TOC_VERSION, EntryType, TOCEntry, entry_to_json,
    format_modtime, normalize_name,
)

_BLOCK = tarfile.BLOCKSIZE
_END_OF_ARCHIVE = bytes(2 * _BLOCK)
_EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()
_RFC3339_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_TAR_TYPES = {
    EntryType.DIR: tarfile.DIRTYPE, EntryType.REG: tarfile.REGTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE, EntryType.HARDLINK: tarfile.LNKTYPE,
    EntryType.CHAR: tarfile.CHRTYPE, EntryType.BLOCK: tarfile.BLKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
}


class Progress(Protocol):
    def advance(self, amount: int) -> None: ...


@dataclass(frozen=True)
class WriterOptions:
    """How to write the blob.

    ``compression_level`` defaults to 6, not upstream's 9: measured here, 9 costs several times
    the CPU for about 1 % smaller blobs, and decompression (the lazy-read path) is equally fast.
    ``prefetch`` holds paths to put first, in order; with ``prefetch_absent_ok`` (an image's
    list, which spans its layers, as upstream's ctr-remote takes it) each layer takes the paths it
    has and a layer with none gets no prefetch range. ``workers`` is the number of compression
    processes (None: one per CPU). ``part_size`` is how much uncompressed data one worker task
    takes; it does not change the output. ``strict_names`` refuses input whose names are not
    UTF-8 instead of writing them into the TOC with U+FFFD.
    """

    chunk_size: int = 4 << 20
    compression_level: int = 6
    prefetch: tuple[str, ...] = ()
    prefetch_absent_ok: bool = False
    workers: int | None = None
    part_size: int = 32 << 20
    strict_names: bool = False

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ConfigError(f"chunk size must be positive, not {self.chunk_size}")
        if not 0 <= self.compression_level <= 9:
            raise ConfigError(f"compression level must be 0-9, not {self.compression_level}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")
        if self.part_size <= 0:
            raise ConfigError(f"part size must be positive, not {self.part_size}")


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion produced: everything a manifest and config need, and a few counts."""

    toc_digest: str
    diff_id: str
    uncompressed_size: int
    blob_digest: str
    blob_size: int
    #: TOC entries, chunk entries included (as `inspect` counts them).
    entries: int
    chunk_entries: int
    toc_offset: int
    #: Compressed bytes before `.prefetch.landmark` (the prefetch range); 0 without a list.
    prefetch_size: int
    chunk_size: int
    compression_level: int
    #: entries whose name, link target, owner or xattr names were not UTF-8, as their bytes
    #: (backslash escapes): the TOC holds them with U+FFFD
    renamed: tuple[str, ...] = ()

    def annotations(self) -> dict[str, str]:
        """The layer descriptor annotations stargz-snapshotter and podman look for."""
        return {
            TOC_DIGEST_ANNOTATION: self.toc_digest,
            UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "annotations": self.annotations()}


def convert_tar(
    src: BinaryIO, out: BinaryIO, options: WriterOptions = WriterOptions(),
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert the layer tar stream ``src`` (plain, gzip or zstd) into an eStargz blob on ``out``.

    ``src`` is read once, sequentially; ``out`` is only written to, sequentially.
    """
    with tempfile.TemporaryDirectory(prefix="lazylayer-convert-") as work:
        spool_path = os.path.join(work, "payloads")
        with open(spool_path, "wb") as spool:
            entries = read_tar(src, spool, spool_path)
        return _write(entries, out, options, progress, work)


def convert_dir(
    path: str | os.PathLike[str], out: BinaryIO, options: WriterOptions = WriterOptions(),
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert the directory tree at ``path`` into an eStargz blob on ``out``."""
    entries = read_dir(path)
    with tempfile.TemporaryDirectory(prefix="lazylayer-convert-") as work:
        return _write(entries, out, options, progress, work)


# --------------------------------------------------------------------------------------------
# Planning: entries -> members


@dataclass
class _Placed:
    """An entry in blob order and the members holding its chunks (none for payload-less ones)."""

    entry: SourceEntry
    members: list[int] = field(default_factory=list)


@dataclass
class _Plan:
    placed: list[_Placed]
    members: list[Member]
    #: member index -> index in `placed` of the file it belongs to, for files of several chunks.
    multi_chunk: dict[int, int]


def _plan(ordered: list[SourceEntry], chunk_size: int) -> _Plan:
    chunks: list[Any] = [None]
    tails = [bytearray()]
    placed: list[_Placed] = []
    multi_chunk: dict[int, int] = {}
    for entry in ordered:
        tails[-1] += _tar_header(entry)
        spot = _Placed(entry)
        if entry.type is EntryType.REG and entry.size:
            assert entry.payload is not None
            for start in range(0, entry.size, chunk_size):
                chunks.append(entry.payload.sub(start, min(chunk_size, entry.size - start)))
                tails.append(bytearray())
                spot.members.append(len(chunks) - 1)
            tails[-1] += bytes(-entry.size % _BLOCK)
            if len(spot.members) > 1:
                multi_chunk.update((index, len(placed)) for index in spot.members)
        placed.append(spot)
    members = [Member(chunk, bytes(tail)) for chunk, tail in zip(chunks, tails)]
    return _Plan(placed, members, multi_chunk)


def _tar_header(entry: SourceEntry) -> bytes:
    """The tar header block(s) for ``entry``: ustar, with a PAX header only when needed; names
    that are not UTF-8 keep their bytes."""
    info = tarfile.TarInfo("./" if not entry.name else entry.name)
    info.type = _TAR_TYPES[entry.type]
    info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
    info.uname, info.gname, info.mtime = entry.uname, entry.gname, entry.mtime
    info.size = entry.size if entry.type is EntryType.REG else 0
    if entry.type is EntryType.SYMLINK:
        info.linkname = entry.link_name
    elif entry.type is EntryType.HARDLINK:
        assert entry.link_target is not None
        info.linkname = entry.link_target.name
    info.devmajor, info.devminor = entry.dev_major, entry.dev_minor
    info.pax_headers = {
        **entry.pax,
        **{XATTR_PAX_PREFIX + key: value.decode("utf-8", "surrogateescape")
           for key, value in entry.xattrs.items()},
    }
    try:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except ValueError as exc:
        raise FormatError(f"input entry {entry.name!r}: cannot write its tar header: {exc}") from exc


def _texts(entry: SourceEntry) -> list[tuple[str, str]]:
    """The entry's strings that go into the TOC, with what each is."""
    return [("name", entry.name), ("symlink target", entry.link_name), ("user name", entry.uname),
            ("group name", entry.gname), *(("xattr name", key) for key in entry.xattrs)]


def _check_text(entry: SourceEntry) -> None:
    """``strict_names``: refuse an entry with a string the TOC cannot hold as it is."""
    for what, text in _texts(entry):
        if toc_text(text) != text:
            raise FormatError(
                f"input entry '{shown_name(entry.name)}': {what} '{shown_name(text)}' is not UTF-8, which the "
                "TOC (JSON) cannot hold as it is (without --strict-names it is written with U+FFFD, as upstream does)"
            )


_SURROGATE = re.compile("[\ud800-\udfff]")


def toc_text(text: str) -> str:
    """``text`` as the TOC holds it. Bytes that are not UTF-8 reach us as surrogate escapes
    (tarfile and os.listdir decode with surrogateescape), one per byte; each becomes U+FFFD,
    as Go's encoding/json writes every invalid byte of upstream's TOC."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def shown_name(text: str) -> str:
    """A name's bytes for people: what is not UTF-8 as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------
# Compressing: members -> blob bytes


class _Sink:
    """``out`` with a running sha256 and byte count of everything written (the blob digest)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out, self.digest, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


class _StreamHash:
    """sha256 of the uncompressed stream (the DiffID) and of every multi-chunk file."""

    def __init__(self, multi_chunk: dict[int, int]) -> None:
        self._multi_chunk = multi_chunk
        self.diff = hashlib.sha256()
        self.size = 0
        self.files: dict[int, Any] = {}

    def feed(self, member: int, piece: bytes, is_payload: bool) -> None:
        self.diff.update(piece)
        self.size += len(piece)
        if is_payload and member in self._multi_chunk:
            key = self._multi_chunk[member]
            self.files.setdefault(key, hashlib.sha256()).update(piece)


def _compress(plan: _Plan, sink: _Sink, options: WriterOptions, progress: Progress | None,
              work: str) -> tuple[list[MemberResult], _StreamHash]:
    stream = _StreamHash(plan.multi_chunk)
    parts = _parts(plan.members, options.part_size)
    workers = min(options.workers or os.cpu_count() or 1, len(parts))
    level = options.compression_level
    if workers <= 1:
        def observe(index: int, piece: bytes, is_payload: bool) -> None:
            stream.feed(index, piece, is_payload)
            if progress is not None:
                progress.advance(len(piece))
        return compress_members(plan.members, sink, level, observe), stream

    hashing = _HashThread(plan.members, stream)
    results: list[MemberResult] = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(compress_members_to_file, plan.members[start:end],
                        os.path.join(work, f"part-{number}.gz"), level)
            for number, (start, end) in enumerate(parts)
        ]
        hashing.start()
        try:
            for number, ((start, end), future) in enumerate(zip(parts, futures)):
                try:
                    results += future.result()
                except BrokenProcessPool as exc:
                    raise LazyLayerError(
                        "a compression worker process died (a script calling the writer must "
                        f"guard its entry point with `if __name__ == '__main__'`): {exc}"
                    ) from exc
                _append_file(os.path.join(work, f"part-{number}.gz"), sink)
                if progress is not None:
                    progress.advance(sum(m.uncompressed_size for m in plan.members[start:end]))
        except BaseException:
            hashing.stop()
            for future in futures:
                future.cancel()
            raise
        finally:
            hashing.join()
    hashing.reraise()
    return results, stream


def _parts(members: list[Member], part_size: int) -> list[tuple[int, int]]:
    """Runs of whole members of about ``part_size`` uncompressed bytes, as (start, end) slices."""
    parts: list[tuple[int, int]] = []
    start, size = 0, 0
    for index, member in enumerate(members):
        size += member.uncompressed_size
        if size >= part_size:
            parts.append((start, index + 1))
            start, size = index + 1, 0
    if start < len(members):
        parts.append((start, len(members)))
    return parts


def _append_file(path: str, sink: _Sink) -> None:
    with open(path, "rb") as part:
        while data := part.read(1 << 20):
            sink.write(data)
    os.unlink(path)


class _HashThread(threading.Thread):
    """Hashes the uncompressed stream while worker processes compress it (hashlib and file reads
    release the GIL, so this overlaps with waiting on the workers)."""

    def __init__(self, members: list[Member], stream: _StreamHash) -> None:
        super().__init__(name="estargz-hash", daemon=True)
        self._members, self._stream = members, stream
        self._error: BaseException | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Give up early (the conversion failed elsewhere)."""
        self._stopped.set()

    def run(self) -> None:
        try:
            for index, member in enumerate(self._members):
                if self._stopped.is_set():
                    return
                for piece, is_payload in member_pieces(member):
                    self._stream.feed(index, piece, is_payload)
        except BaseException as exc:  # handed to the caller by reraise()
            self._error = exc

    def reraise(self) -> None:
        if self._error is not None:
            raise self._error


# --------------------------------------------------------------------------------------------
# TOC and footer


def _write(entries: EntryList, out: BinaryIO, options: WriterOptions, progress: Progress | None,
           work: str) -> ConvertResult:
    ordered = entries.ordered(tuple(normalize_name(p) for p in options.prefetch),
                              absent_ok=options.prefetch_absent_ok)
    if options.strict_names:
        for entry in ordered:
            _check_text(entry)
    renamed = tuple(shown_name(entry.name) for entry in ordered
                    if any(toc_text(text) != text for _, text in _texts(entry)))
    plan = _plan(ordered, options.chunk_size)
    sink = _Sink(out)
    results, stream = _compress(plan, sink, options, progress, work)
    offsets = [0] * len(results)
    position = 0
    for index, result in enumerate(results):
        offsets[index] = position
        position += result.compressed_size

    toc_entries = _toc_entries(plan, results, offsets, stream, options.chunk_size)
    toc_json = _toc_json(toc_entries)
    toc_member = Member(None, _toc_tar(toc_json))
    toc_offset = sink.size
    stream.feed(-1, toc_member.tail, False)
    compress_members([toc_member], sink, options.compression_level)
    sink.write(estargz_footer(toc_offset))

    prefetch_size = next(
        (e.offset for e in toc_entries if e.name == PREFETCH_LANDMARK), 0
    ) if options.prefetch else 0
    return ConvertResult(
        toc_digest="sha256:" + hashlib.sha256(toc_json).hexdigest(),
        diff_id="sha256:" + stream.diff.hexdigest(),
        uncompressed_size=stream.size,
        blob_digest="sha256:" + sink.digest.hexdigest(),
        blob_size=sink.size,
        entries=len(toc_entries),
        chunk_entries=sum(1 for e in toc_entries if e.type is EntryType.CHUNK),
        toc_offset=toc_offset,
        prefetch_size=prefetch_size,
        chunk_size=options.chunk_size,
        compression_level=options.compression_level,
        renamed=renamed,
    )


def _toc_entries(plan: _Plan, results: list[MemberResult], offsets: list[int],
                 stream: _StreamHash, chunk_size: int) -> list[TOCEntry]:
    toc: list[TOCEntry] = []
    for number, spot in enumerate(plan.placed):
        entry = spot.entry
        name = toc_text(entry.name)
        head = TOCEntry(
            name=name, type=entry.type, mode=entry.mode, uid=entry.uid, gid=entry.gid,
            uname=toc_text(entry.uname), gname=toc_text(entry.gname), mtime=_toc_mtime(entry),
            link_name=toc_text(entry.link_target.name if entry.link_target else entry.link_name),
            dev_major=entry.dev_major, dev_minor=entry.dev_minor,
            xattrs={toc_text(key): value for key, value in entry.xattrs.items()},
        )
        if entry.type is EntryType.REG:
            head.size = entry.size
            if not spot.members:
                head.digest = _EMPTY_DIGEST
            elif len(spot.members) == 1:
                head.digest = results[spot.members[0]].chunk_digest
            else:
                head.digest = "sha256:" + stream.files[number].hexdigest()
        pieces = [head] + [TOCEntry(name=name, type=EntryType.CHUNK) for _ in spot.members[1:]]
        for index, (piece, member) in enumerate(zip(pieces, spot.members)):
            start = index * chunk_size
            piece.offset = offsets[member]
            piece.chunk_offset = start
            piece.chunk_digest = results[member].chunk_digest
            # Upstream's rule: every chunk that is a full chunk_size long states its size.
            piece.chunk_size = chunk_size if entry.size - start >= chunk_size else 0
        toc += pieces
    return toc


def _toc_mtime(entry: SourceEntry) -> int:
    """The entry's mtime rounded to whole seconds (Go's Round: halves away from zero)."""
    mtime = entry.mtime
    seconds = int(mtime) if isinstance(mtime, int) else int(mtime + (0.5 if mtime >= 0 else -0.5))
    try:
        text = format_modtime(seconds)
        representable = text is None or bool(_RFC3339_SECONDS.fullmatch(text))
    except (ValueError, OverflowError, OSError):
        representable = False
    if not representable:
        raise FormatError(
            f"input entry {entry.name!r}: mtime {mtime} is outside what the TOC's RFC 3339 "
            "modtime can state (years 1000-9999)"
        )
    return seconds


def _toc_json(entries: list[TOCEntry]) -> bytes:
    """The TOC JSON as upstream lays it out (tab-indented), names first-occurrence rule applied."""
    last_uname: dict[int, str] = {}
    last_gname: dict[int, str] = {}
    objects = []
    for entry in entries:
        emit_uname = bool(entry.uname) and last_uname.get(entry.uid) != entry.uname
        emit_gname = bool(entry.gname) and last_gname.get(entry.gid) != entry.gname
        if emit_uname:
            last_uname[entry.uid] = entry.uname
        if emit_gname:
            last_gname[entry.gid] = entry.gname
        obj = entry_to_json(entry, emit_uname=emit_uname, emit_gname=emit_gname)
        if entry.type is EntryType.DIR and not entry.name:
            obj["name"] = "./"  # the root, named as `tar -C dir .` names it
        objects.append(obj)
    document = {"version": TOC_VERSION, "entries": objects}
    return json.dumps(document, indent="\t", ensure_ascii=False).encode("utf-8")


def _toc_tar(toc_json: bytes) -> bytes:
    """The TOC's tar entry (mode 0, mtime 0, like upstream), padding, and end-of-archive."""
    info = tarfile.TarInfo(TOC_TAR_NAME)
    info.mode, info.size = 0, len(toc_json)
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    return header + toc_json + bytes(-len(toc_json) % _BLOCK) + _END_OF_ARCHIVE
