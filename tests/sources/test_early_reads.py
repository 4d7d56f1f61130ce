"""A read returns once its own chunks are stored, not when the whole job that fetches them ends
(daemon/inflight.py, workers/fetcher.py `STORE_SLICE`).

The fault is a slow decompression half-way through a job, which a real registry cannot produce
on demand: the `rawchunk` test plug-in holds a worker on a file made by `gated` until the test
creates the gate file. The read of the file before it in blob order rides in the same job (its
neighbour window) and must be served while the worker is still held."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest
from lazylayer_testplugin.rawchunk import MEDIA_TYPE, gated, write_blob

from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION
from tests.fuse.daemonproc import RunningDaemon, running_daemon
from tests.sources.conftest import push_descriptors
from tests.support.registry import RunningRegistry, digest_of, push_blob

#: how long the read may take while the job is held (the gate holds it for 60 s)
READ_WAIT = 30.0


@pytest.fixture
def neighbour_daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    """Default neighbour window (256 KiB): a miss's job carries the files after it."""
    with running_daemon(tmp_path / "daemon", config={"prefetch": {"enabled": False},
                                                     "background": {"enabled": False}}) as daemon:
        yield daemon


def test_a_read_is_served_before_its_job_ends(neighbour_daemon: RunningDaemon, registry: RunningRegistry,
                                             tmp_path: Path):
    gate = tmp_path / "gate"
    files = {"app/first.txt": b"served before the job ends\n", "app/held.bin": gated(str(gate), 100_000)}
    blob, toc_digest = write_blob(files)
    push_blob(registry, "early/app", blob)
    descriptor = {"mediaType": MEDIA_TYPE, "digest": digest_of(blob), "size": len(blob),
                  "annotations": {TOC_DIGEST_ANNOTATION: toc_digest}}
    ref = push_descriptors(registry, "early/app", "v1", [descriptor], [digest_of(b"not a tar")])
    diff = neighbour_daemon.layer_dir(ref, digest_of(blob))
    try:
        assert sorted(p.name for p in (diff / "app").iterdir()) == ["first.txt", "held.bin"]
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append((diff / "app/first.txt").read_bytes()), daemon=True)
        reader.start()
        reader.join(READ_WAIT)
        assert not gate.exists()
        assert got == [files["app/first.txt"]], "the read waited for the rest of its job"
    finally:
        gate.touch()  # lets the held worker go on
    assert (diff / "app/held.bin").read_bytes() == files["app/held.bin"]
