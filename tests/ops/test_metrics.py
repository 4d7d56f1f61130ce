"""The metrics endpoint, scraped over real HTTP: event counters, LMDB state, pool state."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import requests
import trio

from lazylayer.daemon.metrics import Metrics, StateSources
from lazylayer.daemon.pool import WorkerPool
from lazylayer.shared.errors import ConfigError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import Layers
from tests.support.layers import build_layer, file
from tests.support.registry import free_port


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_scrape_shows_events_layers_cache_and_workers(tmp_path):
    MiB = 1 << 20
    store = open_store(StoreOptions(str(tmp_path / "cache"), map_size=64 * MiB, chunk_budget=4 * MiB))
    layer = build_layer([file("a.txt", b"a" * 1000)])
    toc = BlobReader.open(BytesSource(layer.blob)).toc
    record = Layers(store).register(layer.digest, len(layer.blob), toc, verified=True)
    Layers(store).add_fetched(layer.digest, 123)
    chunks = ChunkStore(store)
    for _ in range(6):  # 6 MiB into a 4 MiB budget: puts evict
        data = os.urandom(MiB)
        chunks.put("sha256:" + hashlib.sha256(data).hexdigest(), data)

    port = free_port()

    async def main() -> str:
        endpoint = f"ipc://{tmp_path}/w.sock"
        async with WorkerPool(endpoint, spawn=1) as pool:
            with trio.fail_after(30):
                await pool.wait_workers(1)
            metrics = Metrics()
            metrics.attach(StateSources.in_trio(Layers(store).all, chunks.stats, pool.status))
            metrics.reads.labels("cache").inc(3)
            metrics.read_bytes.inc(4096)
            metrics.fetch_seconds.labels("fetch_chunks").observe(0.02)
            metrics.errors.labels("digest").inc()
            metrics.serve(f"127.0.0.1:{port}")
            try:
                return await trio.to_thread.run_sync(
                    lambda: requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            finally:
                metrics.close()

    values = samples(trio.run(main))
    label = f'layer="{record.digest}"'
    assert values[f"lazylayer_layer_size_bytes{{{label}}}"] == len(layer.blob)
    assert values[f"lazylayer_layer_fetched_bytes{{{label}}}"] == 123
    assert values[f'lazylayer_layer_state{{{label},state="registered"}}'] == 1
    assert values['lazylayer_reads_total{source="cache"}'] == 3
    assert values["lazylayer_read_bytes_total"] == 4096
    assert values['lazylayer_fetch_seconds_count{kind="fetch_chunks"}'] == 1
    assert values['lazylayer_errors_total{kind="digest"}'] == 1
    assert values["lazylayer_cache_evictions_total"] >= 2
    assert 0 < values["lazylayer_cache_stored_bytes"] <= 4 * MiB
    assert values["lazylayer_workers_alive"] == 1
    store.close()


def test_bad_metrics_address_is_a_config_error():
    with pytest.raises(ConfigError, match="HOST:PORT"):
        Metrics().serve("nonsense")


def test_the_front_does_not_load_prometheus_when_metrics_are_off():
    """With ``metrics.address`` empty (the default) the front never imports prometheus_client:
    ~30 ms of every daemon start, before the mount."""
    code = ("import sys, lazylayer.daemon.service, lazylayer.daemon.cli.main; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
