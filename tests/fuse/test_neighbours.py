"""A miss fetches its neighbours in blob order: the other small files of a directory arrive with the
first one read, verified and stored like any chunk, in the miss's own job (`fuse.neighbour_window`)
or in a second job the miss does not wait for (`fuse.neighbour_ahead` after it,
`fuse.neighbour_behind` before it)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.fuse.daemonproc import start_daemon
from tests.support.layers import build_layer, directory, file
from tests.support.registry import Layer, RunningRegistry, push_image

FILES = {f"pkg/m{i:02d}.py": random.Random(i).randbytes(3000) for i in range(20)}


@pytest.fixture(scope="module")
def small_files(registry: RunningRegistry) -> str:
    built = build_layer([directory("pkg/"), *[file(n, d) for n, d in FILES.items()]])
    push_image(registry, "fuse/small", "v1",
               [Layer(built.blob, annotations=dict(built.result.annotations()), diff_id=built.result.diff_id)])
    return f"{registry.host}/fuse/small:v1"


@pytest.mark.parametrize("window, ahead, behind, backwards, jobs_for_six_files", [
    (256 << 10, 0, 0, False, 1), (0, 0, 0, False, 6), (0, 256 << 10, 0, False, 2), (0, 0, 256 << 10, True, 2),
    (0, 256 << 10, 0, True, 7)])
def test_a_miss_brings_the_other_files_of_its_directory(small_files: str, tmp_path: Path, window: int, ahead: int,
                                                       behind: int, backwards: bool, jobs_for_six_files: int):
    daemon = start_daemon(tmp_path / "d", workers=1,
                          config={"fuse": {"neighbour_window": window, "neighbour_ahead": ahead,
                                           "neighbour_behind": behind},
                                  "background": {"enabled": False},
                                  "prefetch": {"enabled": False}})
    try:
        diff = Path(daemon.call("image", {"ref": small_files})["layers"][0]["path"])
        names = sorted(FILES)[:6]
        for name in reversed(names) if backwards else names:
            with open(diff / name, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                assert f.read() == FILES[name]
        assert daemon.call("status")["fetch"]["jobs"] == jobs_for_six_files
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def landmarked_files(registry: RunningRegistry) -> str:
    """The same files, with a prefetch landmark after the first one."""
    built = build_layer([directory("pkg/"), *[file(n, d) for n, d in FILES.items()]], prefetch=(sorted(FILES)[0],))
    push_image(registry, "fuse/small-landmark", "v1",
               [Layer(built.blob, annotations=dict(built.result.annotations()), diff_id=built.result.diff_id)])
    return f"{registry.host}/fuse/small-landmark:v1"


@pytest.mark.parametrize("prefetch, jobs_for_six_misses", [(True, 6), (False, 2)])
def test_a_miss_past_a_prefetched_landmark_starts_no_side_job(landmarked_files: str, tmp_path: Path, prefetch: bool,
                                                              jobs_for_six_misses: int):
    """With the landmark range prefetched, the start's reads are known and a miss is a straggler:
    its side job would only guess at them (it took CPU from the bench's prefetch-on app start).
    Without prefetch the same misses still bring their neighbours along."""
    daemon = start_daemon(tmp_path / "d", workers=1,
                          config={"fuse": {"neighbour_window": 0, "neighbour_ahead": 256 << 10,
                                           "neighbour_behind": 0},
                                  "background": {"enabled": False},
                                  "prefetch": {"enabled": prefetch, "timeout": 30.0}})
    try:
        diff = Path(daemon.call("image", {"ref": landmarked_files})["layers"][0]["path"])
        before = daemon.call("status")["fetch"]["jobs"]
        assert before == (1 if prefetch else 0)  # the landmark range, fetched before the resolve answered
        for name in sorted(FILES)[6:12]:
            with open(diff / name, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                assert f.read() == FILES[name]
        assert daemon.call("status")["fetch"]["jobs"] - before == jobs_for_six_misses
    finally:
        daemon.stop()
