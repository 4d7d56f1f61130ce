"""The profile document and its store: merging runs, replay order, validation of what comes from
the network, and the LMDB database (a worker's merge, a cache made before it existed)."""

from __future__ import annotations

import json

import pytest

from lazylayer.shared.errors import FormatError
from lazylayer.shared.store.env import DB_NAMES, StoreOptions, open_store
from lazylayer.shared.store.profiles import Profile, ProfileChunk, Profiles, replay_order

M = "sha256:" + "a" * 64
L1, L2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
D = "sha256:" + "d" * 64


def chunk(layer: str, node: int, at_ms: int, seen: int = 1, offset: int = 0) -> ProfileChunk:
    return ProfileChunk(layer, node, offset, 100, D, seen, at_ms)


def run(*chunks: ProfileChunk) -> Profile:
    return Profile(M, 1, replay_order(chunks, 1))


def test_runs_merge_common_chunks_first_then_by_typical_first_access() -> None:
    first = run(chunk(L1, 2, 10), chunk(L1, 3, 20), chunk(L2, 4, 5))
    second = run(chunk(L1, 2, 30), chunk(L1, 3, 40), chunk(L1, 9, 1))
    third = run(chunk(L1, 2, 20), chunk(L2, 4, 50))
    merged = first.merge(second).merge(third)
    assert merged.runs == 3
    order = [(c.layer, c.node_id, c.seen, c.at_ms) for c in merged.chunks]
    # seen in 2 or 3 of 3 runs first (by mean first access), then the one odd run's chunk
    assert order == [(L1, 2, 3, 20), (L2, 4, 2, 27), (L1, 3, 2, 30), (L1, 9, 1, 1)]
    assert [c.node_id for c in merged.for_layer(L2)] == [4]


def test_document_round_trips_and_names_each_layer_once() -> None:
    profile = run(chunk(L1, 2, 10), chunk(L2, 3, 20), chunk(L1, 5, 30, offset=1 << 22))
    raw = profile.to_json()
    assert json.loads(raw)["layers"] == [L1, L2]
    assert Profile.from_json(raw) == profile
    assert Profile.from_json(raw, manifest=M) == profile


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema="other"), "not a lazylayer.profile.v1"),
    (lambda d: d.update(manifest="sha256:xyz"), "not a sha256 digest"),
    (lambda d: d.update(runs=0), "not a positive count"),
    (lambda d: d["layers"].append("../etc"), "not a list of sha256"),
    (lambda d: d["chunks"].append([5, 1, 0, 1, D, 1, 0]), "malformed or out of range"),  # no layer 5
    (lambda d: d["chunks"].append([0, 0, 0, 1, D, 1, 0]), "malformed or out of range"),  # node 0
    (lambda d: d["chunks"].append([0, 7, 0, 1, D, 2, 0]), "malformed or out of range"),  # seen > runs
    (lambda d: d["chunks"].append([0, 7, -1, 1, D, 1, 0]), "malformed or out of range"),
    (lambda d: d["chunks"].append([0, 7, 0, 1, "md5:x", 1, 0]), "malformed or out of range"),
    (lambda d: d["chunks"].append([0, 7, 0, True, D, 1, 0]), "malformed or out of range"),
    (lambda d: d["chunks"].append(list(d["chunks"][0])), "listed before"),
])
def test_hostile_documents_are_refused_with_what_is_wrong(change, message) -> None:
    doc = json.loads(run(chunk(L1, 2, 10)).to_json())
    change(doc)
    with pytest.raises(FormatError, match=message):
        Profile.from_json(json.dumps(doc).encode())


def test_size_cap_garbage_and_other_manifest_are_refused() -> None:
    raw = run(chunk(L1, 2, 10)).to_json()
    with pytest.raises(FormatError, match="more than the 10-byte limit"):
        Profile.from_json(raw, max_bytes=10)
    with pytest.raises(FormatError, match="not JSON"):
        Profile.from_json(b"\xff{")
    with pytest.raises(FormatError, match="not " + "sha256:" + "b" * 64):
        Profile.from_json(raw, manifest="sha256:" + "b" * 64)


def test_store_merges_runs_and_serves_layers_of_other_images(tmp_path) -> None:
    other = "sha256:" + "e" * 64
    with open_store(StoreOptions(str(tmp_path / "cache"), map_size=1 << 26)) as store:
        profiles = Profiles(store)
        profiles.merge_run(run(chunk(L1, 2, 10)))
        stored = profiles.merge_run(run(chunk(L1, 2, 30), chunk(L2, 3, 5)))
        assert (stored.profile.runs, stored.source) == (2, "recorded")
        assert profiles.get(M).profile == stored.profile
        profiles.put(Profile(other, 1, (chunk(L1, 7, 1),)), "registry r/x")
        # L1 is in both: the profile with more runs speaks for it
        assert [c.node_id for c in profiles.for_layer(L1)] == [2]
        assert [c.node_id for c in profiles.for_layer(L2)] == [3]
        assert profiles.remove(M) and not profiles.remove(M)
        assert profiles.get(M) is None


def test_a_cache_made_before_the_profiles_database_opens_read_only(tmp_path, monkeypatch) -> None:
    import lazylayer.shared.store.env as env

    options = StoreOptions(str(tmp_path / "cache"), map_size=1 << 26)
    monkeypatch.setattr(env, "DB_NAMES", tuple(n for n in DB_NAMES if n != "profiles"))
    open_store(options).close()
    monkeypatch.setattr(env, "DB_NAMES", DB_NAMES)
    with open_store(options, readonly=True) as store:
        assert Profiles(store).get(M) is None


def test_cli_says_when_there_is_no_cache_and_creates_none(tmp_path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "nowhere"
    done = subprocess.run([sys.executable, "-m", "lazylayer.daemon.cli.main", "profile", "show", M, "--cache-dir",
                           str(missing), "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                          env={"LAZYLAYER_CONFIG": "", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and f"no lazylayer cache at {missing}" in done.stderr, done.stderr
    assert not missing.exists()
