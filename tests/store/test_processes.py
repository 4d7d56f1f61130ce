"""The store's process rules, each checked with real separate processes (exec, never fork)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lazylayer.shared.store.chunks import ChunkStore, chunk_key
from lazylayer.shared.store.env import open_store
from lazylayer.shared.store.eviction import Janitor
from tests.store.procs import MiB, content, digest_of, options

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 120  # a deadlock guard, not a performance assertion


def spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.procs", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen[str], line: str) -> None:
    got = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert got == line, f"child said {got!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"  # type: ignore[union-attr]


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, f"child failed ({proc.returncode}): {out} {err}"
    return out


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=CHILD_TIMEOUT)


def test_two_writers_and_two_readers_at_once_every_byte_checked(tmp_path):
    path = str(tmp_path / "cache")
    geometry = (256, 200)  # map MiB, budget MiB: large enough that nothing is evicted
    count, base = 24, 700 * 1024
    stop = tmp_path / "stop"
    # Create the environment first so read-only openers find it.
    open_store(options(path, *geometry)).close()
    readers = [spawn("reader", path, *geometry, "1,2", count, base, stop) for _ in range(2)]
    writers = [spawn("writer", path, *geometry, seed, count, base) for seed in (1, 2)]
    for w in writers:
        assert finish(w).strip() == "done"
    stop.touch()
    results = [json.loads(finish(r)) for r in readers]
    total = sum(len(content(seed, i, base)) for seed in (1, 2) for i in range(count))
    for result in results:
        assert result["bytes_checked"] >= total  # the final pass read every chunk whole


def test_reader_never_waits_for_the_write_lock(tmp_path):
    path = str(tmp_path / "cache")
    geometry = (64, 40)
    with open_store(options(path, *geometry)) as store:
        for i in range(3):
            data = content(9, i, 100_000)
            ChunkStore(store).put(digest_of(data), data)
    holder = spawn("hold-write", path, *geometry)
    try:
        wait_for(holder, "locked")
        stop = tmp_path / "stop"
        stop.touch()
        reader = spawn("reader", path, *geometry, "9", 3, 100_000, stop)
        assert json.loads(finish(reader))["bytes_checked"] > 0
    finally:
        kill(holder)


def test_writer_killed_mid_put_leaves_no_partial_chunk(tmp_path):
    path = str(tmp_path / "cache")
    geometry = (64, 40)
    victim = spawn("die-mid-put", path, *geometry, 5, 4)
    wait_for(victim, "mid")  # two of four parts written inside the open txn
    kill(victim)
    data = content(5, 0, 4 * MiB)
    with open_store(options(path, *geometry)) as store:
        chunks = ChunkStore(store)
        assert chunks.read(chunk_key(digest_of(data))) is None
        assert not chunks.has(chunk_key(digest_of(data)))
        assert chunks.stats().chunks == 0
        # The dead writer's lock is recovered (robust mutex): the next writer gets through.
        assert chunks.put(digest_of(data), data)
        assert chunks.read(chunk_key(digest_of(data))) == data


@pytest.mark.parametrize("janitor_first", [True, False])
def test_killed_reader_does_not_leak_space(tmp_path, janitor_first):
    """A dead reader pins every page freed after its snapshot: without reader_check() a churn in
    a half-full map hits MapFull after ~33 puts (limits §4.5). Here 200 puts must go through."""
    path = str(tmp_path / "cache")
    geometry = (64, 40)
    with open_store(options(path, *geometry)) as store:
        chunks = ChunkStore(store)
        for i in range(30):
            data = content(3, i, MiB // 2)
            chunks.put(digest_of(data), data)
        reader = spawn("hold-read", path, *geometry)
        wait_for(reader, "ready")
        kill(reader)
        if janitor_first:
            assert Janitor(chunks).run_once().stale_readers == 1
        for i in range(200):
            data = os.urandom(MiB)
            chunks.put(digest_of(data), data)
            assert chunks.stats().accounted_bytes <= store.budget
        assert store.reader_check() == 0


def test_eviction_holds_the_cap_with_concurrent_writers(tmp_path):
    """Two writers pushing 3x the budget through: the accounted bytes never pass the cap, and the
    data file stays within the map with room to spare."""
    path = str(tmp_path / "cache")
    geometry = (96, 32)
    open_store(options(path, *geometry)).close()
    writers = [spawn("writer", path, *geometry, seed, 40, 600 * 1024) for seed in (7, 8)]
    for w in writers:
        assert finish(w).strip() == "done"
    with open_store(options(path, *geometry)) as store:
        stats = ChunkStore(store).stats()
        assert stats.accounted_bytes <= store.budget
        assert 0 < stats.chunks < 80
        assert os.path.getsize(Path(path) / "data.mdb") <= 96 * MiB


@pytest.mark.slow
def test_measure_cached_4k_read_from_another_process(tmp_path):
    path = str(tmp_path / "cache")
    geometry = (64, 40)
    data = content(11, 0, 4 * MiB)[: 4 * MiB]
    with open_store(options(path, *geometry)) as store:
        ChunkStore(store).put(digest_of(data), data)
    out = finish(spawn("bench-4k", path, *geometry, chunk_key(digest_of(data)).hex(), len(data), 50_000))
    print("cached 4 KiB read from a separate reader process:", out.strip())
