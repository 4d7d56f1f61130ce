"""Done-when of learned prefetch: a real program run on a mounted image is recorded, the profile
pushed to the real registry, and a second daemon with an empty cache replays it: the program's
reads are then cache hits, and the registry saw a handful of large requests, not hundreds."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from lazylayer.shared.store.profiles import Profile, ProfileChunk
from lazylayer.workers.profiles import push_profile
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.manifests import resolve_manifest
from lazylayer.workers.registry.reference import parse_reference
from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.profiles.conftest import READ_FILES, blob_reads, make_tree
from tests.support.faultproxy import FaultProxy
from tests.support.fetchstack import ImageTree, NO_NEIGHBOURS, PushedImage, push_image_trees
from tests.support.registry import RunningRegistry, free_port

#: no neighbour fetch, no background walk: every cold miss is its own request, nothing else runs
CONFIG: dict[str, dict[str, Any]] = {"background": {"enabled": False}, "fuse": NO_NEIGHBOURS,
                                     "prefetch": {"profile_quiet": 60.0}}


def run_program(root: Path) -> bytes:
    """The recorded program: cat of every module, as a start-up reads its imports."""
    done = subprocess.run(["sh", "-c", 'cat "$1"/lib/*.py', "sh", str(root)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def mount(daemon: RunningDaemon, ref: str, target: Path) -> None:
    done = daemon.cli("mount", ref, str(target))
    assert done.returncode == 0, done.stderr + daemon.log()


def wait_replays(daemon: RunningDaemon, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        profiles = daemon.call("status")["profiles"]
        if profiles["replays"] and all(r["state"] != "running" for r in profiles["replays"]):
            return profiles
        time.sleep(0.1)
    raise AssertionError(f"replay not done after {timeout} s:\n{daemon.log()}")


def test_recorded_profile_pushed_then_replayed_by_a_cold_daemon(proxy: FaultProxy, app_image: PushedImage,
                                                                tmp_path: Path) -> None:
    ref = app_image.ref_via(proxy.host)
    first = start_daemon(tmp_path / "first", workers=2, config=CONFIG)
    try:
        mount(first, ref, tmp_path / "first" / "view")
        with proxy.lock:
            proxy.seen.clear()
        expected = run_program(tmp_path / "first" / "view")
        cold_requests = blob_reads(proxy)
        pushed = first.cli("profile", "push", ref, "--json")
        assert pushed.returncode == 0, pushed.stderr + first.log()
    finally:
        first.stop()
    assert cold_requests >= READ_FILES  # one miss, one request per module

    port = free_port()
    second = start_daemon(tmp_path / "second", workers=2,
                          config={**CONFIG, "prefetch": {"profiles": "registry", "profile_quiet": 60.0},
                                  "metrics": {"address": f"127.0.0.1:{port}"}})
    try:
        with proxy.lock:
            proxy.seen.clear()
        mount(second, ref, tmp_path / "second" / "view")
        profiles = wait_replays(second)
        replay_requests = blob_reads(proxy)
        with proxy.lock:
            proxy.seen.clear()
        assert run_program(tmp_path / "second" / "view") == expected
        after_requests = blob_reads(proxy)
        profiles = second.call("status")["profiles"]
        shown = second.cli("profile", "show", ref)
        status = second.cli("status")
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        removed, gone = second.cli("profile", "rm", ref), second.cli("profile", "show", ref)
        pulled, back = second.cli("profile", "pull", ref), second.cli("profile", "show", ref, "--json")
    finally:
        second.stop()
    assert [r["state"] for r in profiles["replays"]] == ["done"]
    assert profiles["replays"][0]["chunks"] == READ_FILES and profiles["replays"][0]["skipped"] == 0
    # a handful of large requests instead of hundreds, and the program then hardly fetches at all
    assert replay_requests <= 4, replay_requests
    assert after_requests <= READ_FILES // 20, after_requests
    assert profiles["hits"] >= READ_FILES * 0.95 and profiles["waste"] <= READ_FILES * 0.05, profiles
    assert shown.returncode == 0 and "from registry" in shown.stdout, shown.stdout + shown.stderr
    assert f"{profiles['hits']} read since (hits)" in status.stdout, status.stdout
    assert f"lazylayer_profile_hit_chunks {float(profiles['hits'])}" in metrics
    assert f"lazylayer_profile_unread_chunks {float(profiles['waste'])}" in metrics
    assert removed.returncode == 0 and gone.returncode == 1 and "no profile of" in gone.stderr, gone.stderr
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(back.stdout)["chunks"] == READ_FILES and json.loads(back.stdout)["source"].startswith("registry")


def test_a_registry_profile_that_is_refused_leaves_the_image_working(registry: RunningRegistry,
                                                                      tmp_path: Path) -> None:
    """Above prefetch.profile_max_size: the lookup says why in the log, no replay, reads work."""
    image = push_image_trees(registry, "profiles/big", "v1", [ImageTree(make_tree(tmp_path / "tree", seed=3))])
    client, ref = RegistryClient(), parse_reference(image.ref)
    manifest = resolve_manifest(client, ref)[0]
    layer = image.layers[0].digest
    push_profile(client, ref, manifest, Profile(manifest.digest, 1, tuple(
        ProfileChunk(layer, n, 0, 10, "sha256:" + "d" * 64, 1, n) for n in range(2, 40))))
    daemon = start_daemon(tmp_path / "d", workers=1,
                          config={**CONFIG, "prefetch": {"profiles": "registry", "profile_max_size": 200}})
    try:
        mount(daemon, image.ref, tmp_path / "d" / "view")
        assert (tmp_path / "d" / "view" / "etc" / "app.conf").read_text() == "answer = 42\n"
        deadline = time.monotonic() + 30
        while "registry lookup failed" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        profiles = daemon.call("status")["profiles"]
    finally:
        daemon.stop()
    assert "more than the 200-byte limit" in daemon.log()
    assert profiles["replays"] == [] and profiles["prefetched"] == 0
