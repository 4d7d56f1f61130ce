"""Opening the one LMDB environment every process shares, and the rules that keep it healthy.

The rules come from what LMDB did on these machines (limits.md §4):

* Each process opens the environment itself, after exec. A handle inherited through fork() seems
  to work but registers its reader slots under the parent's pid, so a crashed child leaks them
  for as long as the parent lives; we refuse to use a handle in a forked child.
* The same environment must not be opened twice in one process (closing one handle drops the
  other's fcntl locks), so a second open of the same path in a process is refused.
* Every process uses the same ``map_size`` and ``max_readers``: a process with a smaller map gets
  ``MapFullError`` (not ``MapResizedError``) when another grew the file, and the first opener fixes
  ``max_readers``. MapFull is still handled: adopt the current size with ``set_mapsize(0)``, clear
  stale readers, let the caller make room, and retry.
* Writers use ``sync=False, metasync=False`` and no writemap (4x the write rate; the cache is
  disposable: every chunk is keyed by, and re-checkable against, its digest). The front opens
  read-only and never begins a write transaction, so it never waits on the write lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import lmdb

from lazylayer.shared.config import CacheConfig
from lazylayer.shared.errors import CacheError, CacheFullError, ConfigError
from lazylayer.shared.logs import Every
from lazylayer.shared.perms import private_dir, private_file
from lazylayer.shared.store.corrupt import hold_open

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Named databases, created on first open by a writer. Order is irrelevant; names are stable.
DB_NAMES = (
    "meta",  # store-wide counters: next layer id, accounted chunk bytes, format version
    "layers",  # layer digest -> LayerRecord
    "layer_ids",  # layer id -> layer digest
    "nodes",  # (layer id, node id) -> node attributes
    "dirents",  # (layer id, parent node id, name) -> (layer id, node id)
    "file_chunks",  # (layer id, node id, chunk offset) -> chunk location and digest
    "chunk_index",  # chunk key -> (size, accounted bytes, parts, access time)
    "chunk_parts",  # chunk key + part number -> <= 1 MiB of verified bytes
    "chunk_lru",  # (access time, chunk key) -> b"" (oldest first)
    "views",  # merged-view key -> view layer id
    "profiles",  # image manifest digest -> learned access profile (profiles.py)
)
FORMAT_VERSION = 1

GiB = 1 << 30
#: Largest share of the map the chunk budget may take: freed pages are reusable only two commits
#: later and mixed value sizes fragment, so a fuller map hit MapFull (limits §4.4).
MAX_BUDGET_FRACTION = 0.85


@dataclass(frozen=True)
class StoreOptions:
    """How every process opens the cache. All processes must pass identical values."""

    path: str
    #: Address space reserved for the map (the file only grows with use).
    map_size: int = 64 * GiB
    max_readers: int = 1024
    #: Byte budget for chunk data (accounted in whole pages); None = MAX_BUDGET_FRACTION of the map.
    chunk_budget: int | None = None

    @classmethod
    def from_config(cls, cache: CacheConfig, path: str | None = None) -> "StoreOptions":
        """The `[cache]` section; ``path`` (a `--cache-dir` flag) overrides ``cache.dir``.
        Every process builds its options here, so they agree as LMDB requires."""
        return cls(path or cache.dir, cache.map_size, cache.max_readers, cache.max_size)

    def budget(self) -> int:
        limit = int(self.map_size * MAX_BUDGET_FRACTION)
        if self.chunk_budget is None:
            return limit
        if self.chunk_budget <= 0 or self.chunk_budget > limit:
            raise ConfigError(
                f"cache chunk budget {self.chunk_budget} must be positive and at most "
                f"{MAX_BUDGET_FRACTION:.0%} of map_size {self.map_size} (= {limit})"
            )
        return self.chunk_budget


# Paths opened in this process: LMDB forbids two handles on one environment per process.
_OPEN: dict[str, "Store"] = {}


def _forget_after_fork() -> None:
    """In a forked child every inherited handle is poisoned, never closed (the parent owns it)."""
    for store in _OPEN.values():
        store._forked = True
    _OPEN.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


class Store:
    """One process's handle on the shared environment and its named databases."""

    def __init__(self, options: StoreOptions, *, readonly: bool) -> None:
        self.options = options
        self.readonly = readonly
        self.budget = options.budget()
        self._forked = False
        self._full_warning = Every(60.0)
        key = os.path.realpath(options.path)
        if key in _OPEN:
            raise CacheError(f"{options.path}: the cache is already open in this process")
        private_dir(options.path)
        # Before mapping it: a damaged file is set aside (a short one would be SIGBUS).
        self._users_fd = hold_open(options.path)
        try:
            self.env = self._open_env(options, readonly)
        except BaseException:
            os.close(self._users_fd)
            raise
        self._key = key
        _OPEN[key] = self

    def _open_env(self, options: StoreOptions, readonly: bool, upgraded: bool = False) -> lmdb.Environment:
        """The environment and its databases; on any failure nothing stays open."""
        if readonly:
            _initialise(options)
        try:
            env = lmdb.open(
                options.path,
                map_size=options.map_size,
                max_readers=options.max_readers,
                max_dbs=len(DB_NAMES),
                readonly=readonly,
                sync=False,
                metasync=False,
                # Chunk values are MiBs of contiguous overflow pages read front to back: with
                # readahead off every 4 KiB page of a cold LMDB read was one major fault (13x
                # slower than a local file in BENCHMARKS.md item 4; 0.25 s vs 3.1 s with it on).
                readahead=True,
                lock=True,
                # The cache holds every image's file contents (0600 ones too): root's alone.
                mode=0o600,
            )
        except lmdb.Error as exc:
            raise CacheError(f"{options.path}: cannot open the cache: {exc}") from exc
        try:
            self.env = env
            self.dbs = self._open_dbs()
            if not readonly:
                for name in ("data.mdb", "lock.mdb"):
                    private_file(os.path.join(options.path, name))
                self._check_format()
        except lmdb.NotFoundError as exc:
            env.close()
            if not readonly or upgraded:
                raise CacheError(f"{options.path}: cannot open the cache: {exc}") from exc
            # A cache made before a named database was added (profiles): a writer adds it, once.
            Store(options, readonly=False).close()
            return self._open_env(options, readonly, upgraded=True)
        except lmdb.Error as exc:
            env.close()
            raise CacheError(f"{options.path}: cannot open the cache: {exc}") from exc
        except BaseException:
            env.close()
            raise
        return env

    def _open_dbs(self) -> dict[str, lmdb._Database]:
        # No txn= here: py-lmdb then opens each handle in its own txn and keeps it (a handle
        # opened in a caller's read-only txn came back unusable).
        return {name: self.env.open_db(name.encode(), create=not self.readonly) for name in DB_NAMES}

    def _check_format(self) -> None:
        def check(txn: lmdb.Transaction) -> None:
            stored = txn.get(b"format", db=self.dbs["meta"])
            if stored is None:
                txn.put(b"format", str(FORMAT_VERSION).encode(), db=self.dbs["meta"])
            elif int(stored) != FORMAT_VERSION:
                raise CacheError(
                    f"{self.options.path}: cache format {int(stored)} is not {FORMAT_VERSION}; wipe the cache"
                )

        self.write(check)

    def db(self, name: str) -> lmdb._Database:
        return self.dbs[name]

    def _alive(self) -> None:
        if self._forked:
            raise CacheError("LMDB handle used in a forked child; open the cache after exec instead")

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in a short read transaction (buffers=True: copy what you keep)."""
        self._alive()
        try:
            txn = self.env.begin(buffers=True)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            txn = self.env.begin(buffers=True)
        try:
            return fn(txn)
        finally:
            txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T], *, make_room: Callable[[], bool] | None = None) -> T:
        """Run ``fn`` in one write transaction, committed only if it returns normally.

        ``fn`` must only touch LMDB: all network and CPU work happens before, because every other
        writer waits on this lock. On MapFull the map size is re-adopted, stale reader slots are
        cleared, ``make_room`` (eviction) runs if given, and ``fn`` is retried on a fresh txn.
        """
        self._alive()
        if self.readonly:
            raise CacheError("write on a read-only cache handle (the front never writes)")
        for attempt in range(4):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.MapFullError:
                if attempt == 3 or not self._relieve(attempt, make_room):
                    break
            except lmdb.Error as exc:
                if not _refused_commit(exc):
                    raise
                # The filesystem is full (LMDB reports ENOSPC as an I/O error): pages freed by
                # eviction are reused without growing the file, so make room once and retry.
                if attempt > 0 or make_room is None or not self._try_relieve(make_room):
                    raise CacheFullError(f"{self.options.path}: the cache filesystem refused a write "
                                         f"({exc}; {_free_space(self.options.path)} free)") from None
                if self._full_warning.due():
                    log.warning("%s: the cache filesystem refused a write (%s); evicted to make room: the "
                                "filesystem holds less than the cache budget of %d bytes", self.options.path,
                                exc, self.budget)
        raise CacheError(
            f"{self.options.path}: the LMDB map ({self.options.map_size} bytes) is full; "
            "raise cache.map_size or lower the chunk budget"
        )

    def _relieve(self, attempt: int, make_room: Callable[[], bool] | None) -> bool:
        """One step of MapFull recovery; False when there is nothing left to try."""
        self.env.set_mapsize(0)  # another process may have grown the file
        self.env.reader_check()  # dead readers pin old pages (limits §4.5)
        if attempt == 0:
            return True
        if make_room is None or not make_room():
            return False
        # Pages freed by a commit are reusable only after the next one (limits §4.4).
        try:
            with self.env.begin(write=True) as txn:
                txn.put(b"tick", b"", db=self.dbs["meta"])
        except lmdb.Error:
            pass  # the retry will tell
        return True

    def _try_relieve(self, make_room: Callable[[], bool]) -> bool:
        """`_relieve` for a full filesystem, where making room may itself fail to commit."""
        try:
            return self._relieve(1, make_room)
        except (CacheError, lmdb.Error):
            return False

    def reader_check(self) -> int:
        """Free the reader slots of dead processes; returns how many were freed."""
        self._alive()
        return self.env.reader_check()

    def close(self) -> None:
        if self._forked:
            return
        if _OPEN.get(self._key) is self:
            del _OPEN[self._key]
        self.env.close()
        os.close(self._users_fd)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refused_commit(exc: lmdb.Error) -> bool:
    """A commit the filesystem refused (ENOSPC, EIO), as opposed to a misuse of the API."""
    return isinstance(exc, lmdb.DiskError) or str(exc).startswith("mdb_txn_commit")


def _free_space(path: str) -> str:
    try:
        st = os.statvfs(path)
    except OSError:
        return "unknown"
    return f"{st.f_bavail * st.f_frsize} bytes"


def _initialise(options: StoreOptions) -> None:
    """Create the environment and its databases if missing, so a read-only opener finds them.

    Opened, set up and closed before the read-only handle exists: never two at once.
    """
    if os.path.exists(os.path.join(options.path, "data.mdb")):
        return
    Store(options, readonly=False).close()


def open_store(options: StoreOptions, *, readonly: bool = False) -> Store:
    """Open the cache in this process. Writers (workers, janitor) pass readonly=False."""
    return Store(options, readonly=readonly)
