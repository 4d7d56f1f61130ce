"""containerd with `lazylayer snapshotter` as proxy plugin: ordinary pulls unpack into overlay
snapshots, `ctr-remote image rpull` of eStargz takes layers from the layer store (fetching only
what the container reads), a snapshotter restart leaves running containers alone, and removing
the image frees its snapshots.

The tests share one stack (module-scoped) and run in order.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Callable

import grpc
import pytest

from lazylayer.daemon.snapshotter.proto import snapshots_pb2 as pb
from lazylayer.daemon.snapshotter.proto import snapshots_pb2_grpc

from tests.containerd.conftest import BIG, SMALL, SMALL_TEXT, SNAPSHOTTER, ImageRefs, SnapshotterProcess, Stack

pytestmark = pytest.mark.timeout(240)


def run_in(stack: Stack, ref: str, name: str, *command: str) -> str:
    return stack.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, name, *command).stdout


def test_plain_gzip_pull_is_unpacked_into_overlay_snapshots_and_runs(stack: Stack, images: ImageRefs) -> None:
    stack.ctr("image", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, images.gzip)
    snapshots = stack.snapshotter.snapshots()
    committed = [s for s in snapshots if s["kind"] == "committed"]
    assert len(committed) == 2 and not any(s["remote_digest"] for s in snapshots)
    assert run_in(stack, images.gzip, "plain", "cat", f"/{SMALL}").encode() == SMALL_TEXT
    # the container's write layer goes away with --rm (containerd's garbage collector removes it)
    _wait_for(lambda: [s["name"] for s in stack.snapshotter.snapshots()] == [s["name"] for s in committed])


def test_estargz_rpull_takes_layers_from_the_store_and_fetches_only_what_is_read(
        stack: Stack, images: ImageRefs) -> None:
    stack.ctr("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, images.esgz, binary="ctr-remote")
    remote = [s for s in stack.snapshotter.snapshots() if s["remote_digest"]]
    assert sorted(s["remote_digest"] for s in remote) == sorted(f"sha256:{d}" for d, _ in images.esgz_layers)
    assert all(s["remote_ref"] == images.esgz and s["kind"] == "committed" for s in remote)
    status = stack.front.cli("status", "--json")
    assert json.loads(status.stdout)["snapshots"]["remote"] == 2, status.stderr
    metrics = stack.snapshotter_metrics()
    assert 'lazylayer_snapshots{kind="remote"} 2.0' in metrics
    assert 'lazylayer_snapshot_prepares_total{outcome="remote"} 2.0' in metrics
    # containerd downloaded no layer: its content store has none of the blobs
    content = stack.ctr("content", "ls", "-q").stdout
    assert not any(d in content for d, _ in images.esgz_layers)

    assert run_in(stack, images.esgz, "lazy", "cat", f"/{SMALL}").encode() == SMALL_TEXT
    data_digest, data_size = images.esgz_layers[-1]
    fetched = stack.layer_fetched(data_digest)
    assert 0 < fetched < data_size // 4, (fetched, data_size)  # /data/big.bin (3 MiB) was never read

    # reading the big file later fetches it, through the same lazily served layer
    run_in(stack, images.esgz, "lazy2", "sh", "-c", f"cat /{BIG} >/dev/null")
    assert stack.layer_fetched(data_digest) > data_size // 2


def test_rpull_of_a_plain_gzip_image_falls_back_to_unpacking(stack: Stack, images: ImageRefs) -> None:
    before = {s["name"] for s in stack.snapshotter.snapshots()}
    stack.ctr("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, images.gzip_other, binary="ctr-remote")
    new = [s for s in stack.snapshotter.snapshots() if s["name"] not in before]
    assert new and not any(s["remote_digest"] for s in new)
    assert "could not serve" in stack.snapshotter.log() or "unpacked by containerd" in stack.snapshotter.log()
    assert run_in(stack, images.gzip_other, "fallback", "cat", f"/{SMALL}").encode() == SMALL_TEXT


def test_cri_labels_take_a_layer_from_the_store_too(stack: Stack, images: ImageRefs) -> None:
    """containerd's CRI plugin labels a layer differently from ctr-remote; the snapshotter takes
    both (checked on the wire: this containerd runs without CRI). On a snapshotter of its own:
    containerd's garbage collector removes every snapshot of its snapshotter it does not know."""
    own = SnapshotterProcess(stack.snapshotter.config_path, stack.snapshotter.socket.with_name("cri.sock"),
                             stack.snapshotter.root.with_name("cri-sn"), env={"LAZYLAYER_SNAPSHOTTER_METRICS_ADDRESS": ""})
    own.start()
    try:
        _prepare_with_cri_labels(own, images)
    finally:
        own.stop()


def _prepare_with_cri_labels(snapshotter: SnapshotterProcess, images: ImageRefs) -> None:
    digest = f"sha256:{images.esgz_layers[0][0]}"
    labels = {"containerd.io/snapshot.ref": "cri-target", "containerd.io/snapshot/cri.image-ref": images.esgz,
              "containerd.io/snapshot/cri.layer-digest": digest,
              "containerd.io/snapshot/cri.image-layers": ",".join(f"sha256:{d}" for d, _ in images.esgz_layers)}
    with grpc.insecure_channel(f"unix:{snapshotter.socket}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Prepare(pb.PrepareSnapshotRequest(key="cri-extract", labels=labels))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info = stub.Stat(pb.StatSnapshotRequest(key="cri-target")).info
        assert info.kind == pb.COMMITTED and info.labels["containerd.io/snapshot/remote"] == "remote snapshot"
        with pytest.raises(grpc.RpcError):  # the active snapshot was committed, not left behind
            stub.Stat(pb.StatSnapshotRequest(key="cri-extract"))
        stub.Remove(pb.RemoveSnapshotRequest(key="cri-target"))


def test_snapshotter_restart_keeps_running_containers_and_metadata(stack: Stack, images: ImageRefs) -> None:
    stack.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, images.esgz, "keeper", "sleep", "600")
    before = _settled(stack, "keeper")
    stack.snapshotter.stop(signal.SIGKILL)
    stack.snapshotter.start()
    assert stack.snapshotter.snapshots() == before
    tasks = stack.ctr("task", "ls").stdout
    assert "keeper" in tasks and "RUNNING" in tasks
    out = stack.ctr("task", "exec", "--exec-id", "probe", "keeper", "cat", f"/{SMALL}").stdout
    assert out.encode() == SMALL_TEXT
    # containerd reaches the new process (once its gRPC client's reconnect backoff has passed)
    # and its view of the snapshots is intact
    _wait_for(lambda: stack.ctr("snapshot", "--snapshotter", SNAPSHOTTER, "ls", check=False).returncode == 0)
    assert "keeper" in stack.ctr("snapshot", "--snapshotter", SNAPSHOTTER, "ls").stdout
    stack.ctr("task", "kill", "-s", "SIGKILL", "keeper")
    _wait_for(lambda: "RUNNING" not in stack.ctr("task", "ls").stdout)
    stack.ctr("task", "delete", "keeper")
    stack.ctr("container", "rm", "keeper")


def test_front_restart_keeps_snapshots_and_the_snapshotter_holds_the_layers_again(
        stack: Stack, images: ImageRefs) -> None:
    before = _settled(stack)
    stack.restart_front()
    digests = {f"sha256:{d}" for d, _ in images.esgz_layers}
    # the snapshotter notices the new front and takes its layer references again
    _wait_for(lambda: {l["digest"] for l in stack.front.call("status")["layers"]
                       if l["ref"] == images.esgz and l["references"] >= 1} == digests,
              why=stack.snapshotter.log)
    assert stack.snapshotter.snapshots() == before
    assert run_in(stack, images.esgz, "after-front", "cat", f"/{SMALL}").encode() == SMALL_TEXT


def test_removing_the_image_frees_its_snapshots(stack: Stack, images: ImageRefs) -> None:
    held = {l["digest"]: l["references"] for l in stack.front.call("status")["layers"] if l["ref"] == images.esgz}
    assert held and all(refs >= 1 for refs in held.values())
    for ref in (images.esgz, images.gzip, images.gzip_other):
        stack.ctr("image", "rm", "--sync", ref)
    assert stack.snapshotter.snapshots() == []
    assert os.listdir(stack.snapshotter.root / "snapshots") == []
    released = {l["digest"]: l["references"] for l in stack.front.call("status")["layers"] if l["ref"] == images.esgz}
    assert all(released.get(d, 0) == 0 for d in held), released


def _settled(stack: Stack, *running: str) -> list[dict]:
    """The snapshots once containerd's garbage collector has removed what `run --rm` left:
    committed ones and the write layers of the ``running`` containers."""
    def snapshots() -> list[dict]:
        return stack.snapshotter.snapshots()

    _wait_for(lambda: all(s["kind"] == "committed" or s["name"].rpartition("/")[2] in running
                          for s in snapshots()))
    return snapshots()


def _wait_for(condition: Callable[[], bool], timeout: float = 20, why: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in time\n{why()}"
        time.sleep(0.1)
