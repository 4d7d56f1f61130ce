"""The snapshotter's gRPC service without containerd: a real server on a unix socket, a real
grpc client with the generated stubs, real LMDB and real directories. Fast checks of containerd's
rules (codes, filters, Update masks, restart persistence) and of the remote fallback when no
front serves the layer store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from lazylayer.daemon.snapshotter.metadata import Kind
from lazylayer.daemon.snapshotter.proto import snapshots_pb2 as pb
from lazylayer.daemon.snapshotter.proto import snapshots_pb2_grpc
from lazylayer.daemon.snapshotter.service import RunningSnapshotter, start
from lazylayer.shared.config import load_config

REPO = Path(__file__).resolve().parents[2]
REMOTE_LABELS = {"containerd.io/snapshot.ref": "sha256:" + "c" * 64,
                 "containerd.io/snapshot/remote/stargz.reference": "127.0.0.1:1/none:v1",
                 "containerd.io/snapshot/remote/stargz.digest": "sha256:" + "d" * 64}


def _start(tmp_path: Path) -> RunningSnapshotter:
    overrides = {"daemon.mountpoint": str(tmp_path / "no-front"), "daemon.run_dir": str(tmp_path / "run"),
                 "snapshotter.address": str(tmp_path / "s.sock"), "snapshotter.root": str(tmp_path / "root"),
                 "snapshotter.resolve_timeout": 5.0}
    return start(load_config(None, env={}, overrides=overrides).config)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RunningSnapshotter, snapshots_pb2_grpc.SnapshotsStub]]:
    running = _start(tmp_path)
    channel = grpc.insecure_channel(f"unix:{running.address}")
    try:
        yield running, snapshots_pb2_grpc.SnapshotsStub(channel)
    finally:
        channel.close()
        running.stop()


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_prepare_commit_view_and_containerd_error_codes(served) -> None:
    running, stub = served
    mounts = stub.Prepare(pb.PrepareSnapshotRequest(key="k1")).mounts
    assert [(m.type, list(m.options)) for m in mounts] == [("bind", ["rw", "rbind"])]
    upper = Path(mounts[0].source)
    (upper / "hello").write_text("hi")
    assert _code(lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="k1"))) == grpc.StatusCode.ALREADY_EXISTS
    assert _code(lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="k2", parent="k1"))) == \
        grpc.StatusCode.FAILED_PRECONDITION  # a parent must be committed
    stub.Commit(pb.CommitSnapshotRequest(name="base", key="k1"))
    assert stub.Stat(pb.StatSnapshotRequest(key="base")).info.kind == pb.COMMITTED
    assert stub.Usage(pb.UsageRequest(key="base")).size > 0
    assert _code(lambda: stub.Stat(pb.StatSnapshotRequest(key="k1"))) == grpc.StatusCode.NOT_FOUND

    active = stub.Prepare(pb.PrepareSnapshotRequest(key="top", parent="base")).mounts[0]
    assert active.type == "overlay"
    assert f"lowerdir={upper}" in list(active.options)
    view = stub.View(pb.ViewSnapshotRequest(key="v", parent="base")).mounts[0]
    assert (view.type, view.source, list(view.options)) == ("bind", str(upper), ["ro", "rbind"])
    assert _code(lambda: stub.Remove(pb.RemoveSnapshotRequest(key="base"))) == grpc.StatusCode.FAILED_PRECONDITION
    for key in ("top", "v", "base"):
        stub.Remove(pb.RemoveSnapshotRequest(key=key))
    assert os.listdir(running.snapshotter.snapshots_dir) == []


def test_remote_prepare_without_a_front_falls_back_to_an_ordinary_snapshot(served) -> None:
    running, stub = served
    mounts = stub.Prepare(pb.PrepareSnapshotRequest(key="extract-1", labels=REMOTE_LABELS)).mounts
    assert mounts[0].type == "bind"  # containerd unpacks into it
    info = stub.Stat(pb.StatSnapshotRequest(key="extract-1")).info
    assert info.kind == pb.ACTIVE and "containerd.io/snapshot/remote" not in info.labels
    assert running.snapshotter.counts.fallback == 1


def test_a_child_of_a_remote_layer_the_store_cannot_serve_is_unavailable_and_not_kept(served) -> None:
    running, stub = served
    meta = running.snapshotter.meta
    meta.create(Kind.ACTIVE, "r", "", {})
    meta.commit("r", "remote", {}, remote_ref="127.0.0.1:1/none:v1", remote_digest="sha256:" + "e" * 64)
    assert _code(lambda: stub.Prepare(pb.PrepareSnapshotRequest(key="child", parent="remote"))) == \
        grpc.StatusCode.UNAVAILABLE  # no front serves the layer store
    assert _code(lambda: stub.Stat(pb.StatSnapshotRequest(key="child"))) == grpc.StatusCode.NOT_FOUND
    assert [s.name for s in meta.all()] == ["remote"]


def test_list_filters_as_containerd_sends_them_and_update_masks(served) -> None:
    _, stub = served
    for key, ref in (("a", "sha256:aa"), ("b", "sha256:bb")):
        stub.Prepare(pb.PrepareSnapshotRequest(key=f"x-{key}"))
        stub.Commit(pb.CommitSnapshotRequest(name=key, key=f"x-{key}", labels={"containerd.io/snapshot.ref": ref,
                                                                                "keep": "1"}))

    def names(*filters: str) -> list[str]:
        return sorted(i.name for r in stub.List(pb.ListSnapshotsRequest(filters=list(filters))) for i in r.info)

    assert names() == ["a", "b"]
    assert names('labels."containerd.io/snapshot.ref"==sha256:bb,parent==""') == ["b"]
    assert names('name=="a"', "name==b") == ["a", "b"]
    assert names("kind==committed,name!=a") == ["b"]
    assert names("labels.keep") == ["a", "b"]
    assert _code(lambda: names("size==3")) == grpc.StatusCode.INVALID_ARGUMENT

    info = pb.Info(name="a", labels={"new": "x"})
    updated = stub.Update(pb.UpdateSnapshotRequest(info=info, update_mask=field_mask_pb2.FieldMask(
        paths=["labels.new", "labels.keep"]))).info
    assert dict(updated.labels) == {"containerd.io/snapshot.ref": "sha256:aa", "new": "x"}  # keep deleted
    updated = stub.Update(pb.UpdateSnapshotRequest(info=info)).info
    assert dict(updated.labels) == {"new": "x"}


def test_metadata_survives_a_restart_and_cleanup_removes_orphan_dirs(tmp_path: Path) -> None:
    running = _start(tmp_path)
    snapshotter = running.snapshotter
    snapshotter.prepare("k", "", {})
    snapshotter.commit("c", "k", {"l": "v"})
    running.stop()

    running = _start(tmp_path)
    try:
        again = running.snapshotter
        assert again.stat("c").labels == {"l": "v"}
        orphan = Path(again.snapshots_dir) / "999"
        (orphan / "fs").mkdir(parents=True)
        assert again.cleanup() == ["999"] and not orphan.exists()
        assert again.prepare("k2", "c", {})[0].type == "overlay"
        assert again.stat("k2").id > again.stat("c").id  # ids are never reused
    finally:
        running.stop()


def test_a_bad_metrics_address_is_one_clear_error_before_serving(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lazylayer.daemon.cli.main", "snapshotter",
                           "--address", str(tmp_path / "s.sock"), "--root", str(tmp_path / "root")],
                          env={**os.environ, "LAZYLAYER_CONFIG": "", "LAZYLAYER_SNAPSHOTTER_METRICS_ADDRESS": "9412"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "lazylayer snapshotter: snapshotter.metrics_address: '9412' is not HOST:PORT"]
    assert not (tmp_path / "s.sock").exists()


def test_generated_protos_are_current(tmp_path: Path) -> None:
    """scripts/gen-protos run now gives exactly the committed files."""
    done = subprocess.run([str(REPO / "scripts" / "gen-protos"), str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    committed = REPO / "daemon" / "snapshotter" / "proto"
    names = sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name
