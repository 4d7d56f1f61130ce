"""Chunk store in one process: content addressing, parts, slices, budget, LRU, MapFull."""

from __future__ import annotations

import hashlib
import os

import pytest

from lazylayer.shared.errors import CacheError, DigestMismatchError, FormatError
from lazylayer.shared.store.chunks import PART_SIZE, ChunkStore, chunk_key, footprint, unverified_key
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.eviction import AccessLog, Janitor

MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def chunks(tmp_path):
    store = open_store(StoreOptions(str(tmp_path / "cache"), map_size=256 * MiB, chunk_budget=64 * MiB))
    yield ChunkStore(store)
    store.close()


def test_roundtrip_and_slices_across_parts(chunks):
    data = os.urandom(2 * PART_SIZE + 12345)
    digest = digest_of(data)
    assert chunks.put(digest, data) is True
    assert chunks.put(digest, data) is False  # stored once
    key = chunk_key(digest)
    assert chunks.read(key) == data
    for off, size in [(0, 1), (PART_SIZE - 3, 10), (PART_SIZE, PART_SIZE), (5, 2 * PART_SIZE), (len(data) - 4, 100)]:
        assert chunks.read(key, off, size) == data[off : off + size]
    assert chunks.read(key, len(data), 10) == b""
    assert chunks.stats().chunks == 1
    assert chunks.stats().accounted_bytes == footprint(len(data))


def test_identical_chunks_stored_once_and_misses(chunks):
    data = b"same bytes in two layers"
    chunks.put(digest_of(data), data)
    chunks.put(digest_of(data), bytes(data))
    assert chunks.stats().chunks == 1
    assert chunks.read(chunk_key(digest_of(b"other"))) is None


def test_wrong_digest_never_enters(chunks):
    with pytest.raises(DigestMismatchError):
        chunks.put(digest_of(b"good"), b"evil")
    assert chunks.stats().chunks == 0
    with pytest.raises(FormatError):
        chunk_key("md5:abcd")


def test_unverified_chunks_are_private_to_their_layer(chunks):
    chunks.put_unverified("sha256:" + "a" * 64, 100, 0, b"legacy")
    assert chunks.read(unverified_key("sha256:" + "a" * 64, 100)) == b"legacy"
    assert chunks.read(unverified_key("sha256:" + "b" * 64, 100)) is None


def test_budget_holds_and_lru_order_follows_accesses(chunks):
    budget = chunks.store.budget
    blobs = [os.urandom(MiB) for _ in range(100)]
    keys = []
    log = AccessLog()
    for i, data in enumerate(blobs):
        chunks.put(digest_of(data), data)
        keys.append(chunk_key(digest_of(data)))
        log.touch(keys[0], 10**15 + i)  # chunk 0 is read all the time
        if i % 10 == 0:
            chunks.record_accesses(log.drain())
        assert chunks.stats().accounted_bytes <= budget
    assert chunks.read(keys[0]) == blobs[0]  # recently used survives
    assert chunks.read(keys[1]) is None  # least recently used went first
    assert chunks.read(keys[-1]) == blobs[-1]


def test_janitor_trims_to_low_watermark(chunks):
    for _ in range(60):
        data = os.urandom(MiB)
        chunks.put(digest_of(data), data)
    before = chunks.stats()
    report = Janitor(chunks, low_watermark=0.5).run_once()
    assert report.accounted_bytes <= chunks.store.budget // 2
    assert report.bytes_evicted > 0
    after = chunks.stats()
    assert after.evicted_bytes - before.evicted_bytes == report.bytes_evicted
    assert after.evicted_chunks - before.evicted_chunks == before.chunks - after.chunks


def test_chunk_bigger_than_budget_is_refused(tmp_path):
    with open_store(StoreOptions(str(tmp_path / "c"), map_size=64 * MiB, chunk_budget=2 * MiB)) as store:
        data = os.urandom(3 * MiB)
        with pytest.raises(CacheError):
            ChunkStore(store).put(digest_of(data), data)


def test_budget_above_map_share_is_a_config_error(tmp_path):
    from lazylayer.shared.errors import ConfigError

    with pytest.raises(ConfigError):
        open_store(StoreOptions(str(tmp_path / "c"), map_size=64 * MiB, chunk_budget=63 * MiB))


def test_mapfull_is_handled_by_evicting(tmp_path):
    """Metadata or fragmentation can fill the map before the budget says so: recover, not die."""
    opts = StoreOptions(str(tmp_path / "c"), map_size=32 * MiB, chunk_budget=27 * MiB)
    with open_store(opts) as store:
        chunks = ChunkStore(store)
        filler = store.db("meta")
        # Eat most of the map with something that is not chunk data.
        store.write(lambda txn: txn.put(b"ballast", b"x" * (14 * MiB), db=filler))
        for _ in range(40):
            data = os.urandom(MiB)
            assert chunks.put(digest_of(data), data)
            assert chunks.read(chunk_key(digest_of(data))) == data


def test_second_open_in_one_process_is_refused(tmp_path):
    opts = StoreOptions(str(tmp_path / "c"), map_size=64 * MiB)
    with open_store(opts):
        with pytest.raises(CacheError):
            open_store(opts, readonly=True)
    with open_store(opts, readonly=True) as ro:  # after close it is fine
        with pytest.raises(CacheError):
            ro.write(lambda txn: None)


def test_forked_child_cannot_use_the_handle(tmp_path):
    opts = StoreOptions(str(tmp_path / "c"), map_size=64 * MiB)
    with open_store(opts) as store:
        pid = os.fork()
        if pid == 0:  # child: any use must fail with CacheError
            try:
                store.read(lambda txn: None)
            except CacheError:
                os._exit(0)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_budget_set_at_run_time_is_shared_and_enforced(chunks):
    from lazylayer.shared.errors import ConfigError

    for _ in range(8):
        data = os.urandom(MiB)
        chunks.put(digest_of(data), data)
    freed = chunks.set_budget(3 * MiB)
    assert freed > 0 and chunks.stats().accounted_bytes <= 3 * MiB == chunks.stats().budget
    for _ in range(4):
        data = os.urandom(MiB)
        chunks.put(digest_of(data), data)
        assert chunks.stats().accounted_bytes <= 3 * MiB
    assert Janitor(chunks, low_watermark=0.5).run_once().accounted_bytes <= 3 * MiB // 2
    with pytest.raises(ConfigError):
        chunks.set_budget(chunks.store.options.map_size)
