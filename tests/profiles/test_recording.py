"""Recording and replay on one node: a recording ends on its own after the quiet period (or is
stored when the daemon stops), runs of later daemons on the same cache merge into the profile, and a replay checks every entry against
the TOC (what the TOC does not have is skipped, said once) and ignores images the profile is not
about."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.profiles import Profile, Profiles, replay_order
from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.profiles.conftest import READ_FILES, blob_reads, make_tree
from tests.profiles.test_replay import CONFIG, mount, run_program, wait_replays
from tests.support.faultproxy import FaultProxy
from tests.support.fetchstack import ImageTree, PushedImage, push_image_trees
from tests.support.registry import RunningRegistry

#: neighbours fetched along (a faster cold run); a recording ends after 1 s without a new read
QUIET: dict[str, dict[str, Any]] = {"background": {"enabled": False}, "prefetch": {"profile_quiet": 1.0}}


def wait_recorded(daemon: RunningDaemon, runs: int = 1, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.call("status")["profiles"]["runs_recorded"] >= runs:
            return
        time.sleep(0.2)
    raise AssertionError(f"no run recorded after {timeout} s:\n{daemon.log()}")


def stored(cache_dir: Path) -> Profiles:
    return Profiles(open_store(StoreOptions(str(cache_dir), map_size=4 << 30)))


def daemon_with(profile: Profile, workdir: Path) -> RunningDaemon:
    """A daemon on a fresh cache that holds ``profile`` (as after `lazylayer profile pull`)."""
    profiles = stored(workdir / "cache")
    try:
        profiles.put(profile, "test")
    finally:
        profiles.store.close()
    return start_daemon(workdir, workers=2, config=CONFIG)


@pytest.fixture(scope="module")
def recorded(app_image: PushedImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    """Two daemons one after the other on one cache, each running the program once: the first
    stopped while still recording (it stores the run as it stops), the second's recording ends
    after its quiet period."""
    workdir = tmp_path_factory.mktemp("recording")
    long_quiet = {**QUIET, "prefetch": {"profile_quiet": 600.0}}
    for run, config in ((1, long_quiet), (2, QUIET)):
        daemon = start_daemon(workdir, workers=1, config=config)
        try:
            mount(daemon, app_image.ref, workdir / f"view{run}")
            run_program(workdir / f"view{run}")
            if run == 2:
                wait_recorded(daemon)
                shown = daemon.cli("profile", "show", app_image.manifest_digest)
                assert shown.returncode == 0 and "2 run(s)" in shown.stdout, shown.stdout + shown.stderr
        finally:
            daemon.stop()
        if run == 1:
            first = stored(workdir / "cache")
            try:
                assert first.get(app_image.manifest_digest).profile.runs == 1, daemon.log()
            finally:
                first.store.close()
    profiles = stored(workdir / "cache")
    try:
        yield profiles.get(app_image.manifest_digest).profile
    finally:
        profiles.store.close()


def test_runs_end_after_the_quiet_period_and_merge(recorded: Profile) -> None:
    assert recorded.runs == 2
    assert len(recorded.chunks) == READ_FILES and {c.seen for c in recorded.chunks} == {2}


def test_replay_checks_each_entry_against_the_toc(recorded: Profile, app_image: PushedImage,
                                                  registry: RunningRegistry, tmp_path: Path) -> None:
    lying = [dataclasses.replace(c, digest="sha256:" + "0" * 64) for c in recorded.chunks[:5]]
    absent = [dataclasses.replace(c, node_id=100_000 + i) for i, c in enumerate(recorded.chunks[:3])]
    tampered = Profile(recorded.manifest, recorded.runs, replay_order([*lying, *absent, *recorded.chunks[5:]], 2))
    changed = push_image_trees(registry, "profiles/app", "v2", [ImageTree(make_tree(tmp_path / "v2", seed=17))])
    daemon = daemon_with(tampered, tmp_path)
    try:
        mount(daemon, app_image.ref, tmp_path / "view")
        replays = wait_replays(daemon)["replays"]
        mount(daemon, changed.ref, tmp_path / "view2")  # another image: its layer is in no profile
        with open(tmp_path / "view" / "lib" / "m000.py", "rb") as f:
            assert f.read() == (app_image.layers[0].root / "lib" / "m000.py").read_bytes()
        time.sleep(1.0)
        after = daemon.call("status")["profiles"]["replays"]
    finally:
        daemon.stop()
    assert [(r["chunks"], r["skipped"], r["state"]) for r in replays] == [(READ_FILES - 5, 8, "done")]
    assert after == replays
    assert daemon.log().count("are not in its TOC; skipped") == 1


def test_a_program_started_while_the_replay_runs_joins_its_jobs(recorded: Profile, app_image: PushedImage,
                                                                proxy: FaultProxy, tmp_path: Path) -> None:
    """No waiting for the replay: the program runs as soon as the mount is there, its reads join
    the jobs in flight (or find the chunks stored), and nothing is fetched twice."""
    daemon = daemon_with(recorded, tmp_path)
    try:
        with proxy.lock:
            proxy.seen.clear()
        mount(daemon, app_image.ref_via(proxy.host), tmp_path / "view")
        output = run_program(tmp_path / "view")
        requests = blob_reads(proxy)
        status = daemon.call("status")
    finally:
        daemon.stop()
    root = app_image.layers[0].root / "lib"
    assert output == b"".join((root / f"m{i:03d}.py").read_bytes() for i in range(READ_FILES))
    assert requests <= 4, requests  # the TOC, and the replay's few large requests
    assert status["profiles"]["hits"] >= READ_FILES * 0.95, status["profiles"]
    assert status["fetch"]["jobs"] <= 4, status["fetch"]


def test_the_layer_store_replays_when_a_layer_is_looked_up(recorded: Profile, app_image: PushedImage,
                                                           tmp_path: Path) -> None:
    """What podman does: look MNT/<base64(ref)>/<digest>/diff up; resolving replays the profile."""
    daemon = daemon_with(recorded, tmp_path)
    try:
        diff = daemon.layer_dir(app_image.ref, app_image.layers[0].digest)
        assert "lib" in os.listdir(diff)
        replays = wait_replays(daemon)["replays"]
        data = (diff / "lib" / "m007.py").read_bytes()
        profiles_status = daemon.call("status")["profiles"]
    finally:
        daemon.stop()
    assert [(r["chunks"], r["skipped"], r["state"]) for r in replays] == [(READ_FILES, 0, "done")]
    assert data == (app_image.layers[0].root / "lib" / "m007.py").read_bytes()
    assert profiles_status["prefetched"] == READ_FILES and profiles_status["hits"] == 1
