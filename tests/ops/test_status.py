"""`lazylayer status` of a real daemon: wall-clock times only (a failed resolve's `when` too),
a unit on every size, a legend for refs and for cache use exceeding fetched bytes, and the
`blob` file's whole-blob download counted as fetched bytes."""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

from lazylayer.daemon.cli.status import LEGEND
from tests.fuse.daemonproc import start_daemon
from tests.support.fetchstack import PushedImage
from tests.support.layers import file, make_tar
from tests.support.registry import Layer, RunningRegistry, push_image

SIZE = re.compile(r"^\d+(\.\d)? (B|KiB|MiB|GiB|TiB)$")


def test_status_clock_units_legend_and_blob_bytes(ops_image: PushedImage, registry: RunningRegistry,
                                                  tmp_path: Path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # tables wide enough that no cell is cut
    push_image(registry, "ops/plain-status", "v1", [Layer(gzip.compress(make_tar([file("f", b"x")])))])
    # nothing fetched behind our back: what `fetched` shows is the blob file's download
    daemon = start_daemon(tmp_path, workers=1, config={"prefetch": {"enabled": False},
                                                        "background": {"enabled": False}})
    try:
        layer = ops_image.layers[1]
        blob = (daemon.layer_root(ops_image.ref, layer.digest) / "blob").read_bytes()
        assert blob == layer.blob
        failed = daemon.cli("mount", f"{registry.host}/ops/plain-status:v1", str(tmp_path / "view"))
        assert failed.returncode == 1
        status = json.loads(daemon.cli("status", "--json").stdout)
        info = next(l["info"] for l in status["layers"] if l["digest"] == layer.digest)
        assert info["fetched_size"] == info["size"] == layer.size
        assert abs(info["read_time"] - time.time()) < 120
        assert [abs(f["when"] - time.time()) < 120 for f in status["failures"]] == [True]

        human = daemon.cli("status")
        assert human.returncode == 0, human.stderr
        row = next((line for line in human.stdout.splitlines() if layer.digest[:19] in line), human.stdout)
        cells = [cell.strip() for cell in re.split(r"[│┃]", row)]
        size, fetched, prefetch, last_read = cells[3:7]
        assert all(SIZE.match(cell) for cell in (size, fetched, prefetch)), cells
        assert time.strptime(last_read, "%Y-%m-%d %H:%M:%S")
        assert re.search(r"cache: \d+ chunks, \S+ (B|KiB|MiB|GiB) of \S+ (B|KiB|MiB|GiB)", human.stdout)
        assert LEGEND in human.stdout and "cache use can exceed the fetched bytes" in LEGEND
    finally:
        daemon.stop()
