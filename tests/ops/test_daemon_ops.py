"""A real daemon operated like production: metrics scraped over HTTP while reading through the
mount, SIGHUP applying live knobs (worker count, cache cap, log level) and naming the rest, the
janitor keeping LRU order from the front's reads, and `status` showing workers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import requests

from lazylayer.shared.errors import LazyLayerError
from lazylayer.workers.registry.local import free_port
from tests.fuse.daemonproc import RunningDaemon, daemon_config, start_daemon
from tests.ops.test_metrics import samples
from tests.support.fetchstack import CHUNK_SIZE, NO_NEIGHBOURS, PushedImage

#: the two files read: one in the first layer, one in the second
TOOL, BLOB = "usr/bin/tool", "opt/data/blob.bin"


def read_cold(daemon: RunningDaemon, image: PushedImage, layer: int, path: str) -> bytes:
    """The file's bytes through the mount, after dropping its pages from the kernel page cache,
    so every byte is a FUSE read answered by the daemon."""
    file = daemon.layer_dir(image.ref, image.layers[layer].digest) / path
    with open(file, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        data = f.read()
    assert data == (image.layers[layer].root / path).read_bytes()
    return data


def scrape(port: int) -> dict[str, float]:
    reply = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    reply.raise_for_status()
    return samples(reply.text)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """``check()``'s first truthy value; a LazyLayerError (daemon not answering yet) counts as no."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except LazyLayerError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_metrics_reload_and_lru_through_a_real_daemon(ops_image: PushedImage, tmp_path: Path):
    port = free_port()
    config: dict[str, dict[str, Any]] = {
        "workers": {"count": 1},
        "metrics": {"address": f"127.0.0.1:{port}"},
        "cache": {"janitor_interval": 0.3},
        # only demand reads fetch, so hits and misses are exactly what the reads caused
        "prefetch": {"enabled": False},
        "background": {"enabled": False},
        "fuse": {"read_ahead_chunks": 0, **NO_NEIGHBOURS},
    }
    daemon = start_daemon(tmp_path, workers=1, workers_flag=False, config=config)
    try:
        blob = read_cold(daemon, ops_image, 1, BLOB)
        tool = read_cold(daemon, ops_image, 0, TOOL)
        cold = scrape(port)
        assert cold['lazylayer_reads_total{source="fuse"}'] > 0
        assert cold["lazylayer_read_bytes_total"] >= len(blob) + len(tool)
        assert cold["lazylayer_cache_misses_total"] > 0
        assert cold['lazylayer_fetch_seconds_count{kind="fetch_chunks"}'] > 0
        assert cold['lazylayer_fetched_bytes_total{priority="foreground"}'] > 0
        assert cold["lazylayer_workers_alive"] == 1
        digest = ops_image.layers[1].digest
        assert cold[f'lazylayer_layer_size_bytes{{layer="{digest}"}}'] == len(ops_image.layers[1].blob)
        assert cold["lazylayer_cache_stored_bytes"] > 0

        # BLOB again, from LMDB: hits only; then let the janitor ship those accesses, so BLOB's
        # chunks are now more recently used than TOOL's
        time.sleep(0.05)
        read_cold(daemon, ops_image, 1, BLOB)
        warm = scrape(port)
        assert warm["lazylayer_cache_misses_total"] == cold["lazylayer_cache_misses_total"]
        assert warm["lazylayer_cache_hits_total"] > cold["lazylayer_cache_hits_total"]
        wait_for("the janitor", lambda: scrape(port).get('lazylayer_fetch_seconds_count{kind="janitor"}', 0)
                 > warm.get('lazylayer_fetch_seconds_count{kind="janitor"}', 0) + 1)

        # reload: a cap that holds BLOB but not BLOB + TOOL, a second worker, DEBUG logs and
        # one knob that needs a restart
        cache = daemon.call("status")["cache"]
        per_chunk = cache["accounted_bytes"] / cache["chunks"]  # page-rounded chunk size
        tool_chunks = -(-len(tool) // CHUNK_SIZE)
        cap = int((cache["accounted_bytes"] - per_chunk * tool_chunks / 2) / 0.9)  # janitor trims to 90 %
        daemon_config(tmp_path, daemon.run_dir, config | {
            "workers": {"count": 2}, "cache": {"janitor_interval": 0.3, "max_size": cap},
            "daemon": {"log_level": "DEBUG"}, "fuse": {"read_ahead_chunks": 0, "attr_timeout": 2.5}})
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)

        def reloaded() -> dict[str, Any] | None:
            status = daemon.call("status")
            alive = [w for w in status["workers"]["workers"] if w["capacity"] > 0]
            return status if len(alive) == 2 and status["cache"]["budget"] == cap else None

        status = wait_for("the reload", reloaded)
        assert status["cache"]["accounted_bytes"] <= cap
        assert status["cache"]["evicted_chunks"] > 0
        log = daemon.log()
        assert "fuse.attr_timeout changed; it takes effect after a restart" in log
        wait_for("a DEBUG line", lambda: "DEBUG lazylayer.daemon.service" in daemon.log().split("reloaded", 1)[1])

        # LRU: BLOB survived the trim, TOOL did not
        before = scrape(port)["lazylayer_cache_misses_total"]
        read_cold(daemon, ops_image, 1, BLOB)
        assert scrape(port)["lazylayer_cache_misses_total"] == before
        read_cold(daemon, ops_image, 0, TOOL)
        assert scrape(port)["lazylayer_cache_misses_total"] > before

        human = daemon.cli("status")
        assert human.returncode == 0, human.stderr
        assert "last heartbeat" in human.stdout and "spawned workers" in human.stdout
        workers = json.loads(daemon.cli("status", "--json").stdout)["workers"]["workers"]
        assert all(w["last_heartbeat_age"] < 5 for w in workers)
        assert sum(w["jobs_done"] for w in workers) > 0
    finally:
        daemon.stop()
