"""Prometheus metrics of the front, served on ``metrics.address``.

Two kinds, on purpose:
- **Events** the read path bumps as they happen (reads, bytes, cache hits/misses, fetch latency,
  errors by kind) are ordinary prometheus_client counters and histograms: cheap increments.
- **State** that already lives somewhere (layer sizes and fetched bytes in LMDB, cache use and
  evictions in LMDB, workers in the pool) is read at scrape time by a collector, so there is one
  source of truth and the read path pays nothing for it. Evictions come from counters the store
  keeps in LMDB, because any process (a worker's put, the janitor) may evict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lazylayer.daemon.jobqueue import Priority
from lazylayer.daemon.pool import PoolStatus
from lazylayer.daemon.fetchstats import FetchObserver
from lazylayer.shared.errors import ConfigError
from lazylayer.shared.store.chunks import ChunkStats
from lazylayer.shared.store.layers import LayerRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Fetch latency buckets [s]: a cached-token ranged GET on a LAN is milliseconds, a cold 4 MiB
#: chunk through auth and redirects can take seconds.
FETCH_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class StateSources:
    """Where scrape-time state comes from. The callables run in the HTTP server's thread and
    must be cheap; use :meth:`in_trio` for state owned by the trio loop (the pool is)."""

    layers: Callable[[], Iterable[LayerRecord]]
    chunk_stats: Callable[[], ChunkStats]
    pool_status: Callable[[], PoolStatus]

    @classmethod
    def in_trio(cls, layers: Callable[[], Iterable[LayerRecord]], chunk_stats: Callable[[], ChunkStats],
                pool_status: Callable[[], PoolStatus]) -> "StateSources":
        """Sources that run inside the calling trio loop (call this from it): the pool's state
        is only consistent there, and it keeps every LMDB read in the loop's thread."""
        token = trio.lowlevel.current_trio_token()

        def hop(fn: Callable[[], T]) -> Callable[[], T]:
            return lambda: trio.from_thread.run_sync(fn, trio_token=token)

        return cls(hop(lambda: list(layers())), hop(chunk_stats), hop(pool_status))


class Metrics(FetchObserver):
    """The front's metrics. One instance per daemon; tests make their own registry. As the
    Remote's observer it counts cache hits/misses, job latency and fetched bytes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reads = Counter("lazylayer_reads", "FUSE reads answered", ["source"], registry=r)
        self.read_bytes = Counter("lazylayer_read_bytes", "bytes returned by FUSE reads", registry=r)
        self.cache_hits = Counter("lazylayer_cache_hits", "chunks a read found in the LMDB cache", registry=r)
        self.cache_misses = Counter("lazylayer_cache_misses", "chunks a read had to fetch", registry=r)
        self.fetch_seconds = Histogram("lazylayer_fetch_seconds", "worker job latency seen by the front",
                                       ["kind"], buckets=FETCH_BUCKETS, registry=r)
        self.fetched_bytes = Counter("lazylayer_fetched_bytes", "compressed bytes workers fetched",
                                     ["priority"], registry=r)
        self.errors = Counter("lazylayer_errors", "errors by kind (shared/errors.py)", ["kind"], registry=r)
        self.cache_corrupt_chunks = Counter("lazylayer_cache_corrupt_chunks",
                                     "cached chunks that no longer matched their digest (dropped, fetched again)",
                                     registry=r)
        self.profile_prefetched = Gauge("lazylayer_profile_prefetched_chunks",
                                        "chunks profile replays fetched", registry=r)
        self.profile_hits = Gauge("lazylayer_profile_hit_chunks",
                                  "chunks profile replays fetched that reads then used", registry=r)
        self.profile_waste = Gauge("lazylayer_profile_unread_chunks",
                                   "chunks profile replays fetched that no read used (yet)", registry=r)
        self._server: object | None = None

    def chunks_read(self, hits: int, misses: int) -> None:
        self.cache_hits.inc(hits)
        self.cache_misses.inc(misses)

    def job_done(self, kind: str, seconds: float) -> None:
        self.fetch_seconds.labels(kind).observe(seconds)

    def fetched(self, priority: Priority, nbytes: int) -> None:
        self.fetched_bytes.labels(priority.name.lower()).inc(nbytes)

    def cache_corrupt(self, chunks: int) -> None:
        self.cache_corrupt_chunks.inc(chunks)

    def profile_chunks(self, prefetched: int, hits: int, unread: int) -> None:
        self.profile_prefetched.set(prefetched)
        self.profile_hits.set(hits)
        self.profile_waste.set(unread)

    def read_done(self, nbytes: int, error: str | None) -> None:
        """A FUSE read answered (``error``: the failure's kind, or None)."""
        if error is None:
            self.reads.labels("fuse").inc()
            self.read_bytes.inc(nbytes)
        else:
            self.errors.labels(error).inc()

    def attach(self, sources: StateSources) -> None:
        """Expose the scrape-time state of ``sources`` (call once)."""
        self.registry.register(_StateCollector(sources))

    def serve(self, address: str) -> None:
        """Start the HTTP endpoint on ``HOST:PORT`` (a daemon thread; stopped by close())."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"metrics.address: {address!r} is not HOST:PORT")
        try:
            server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics.address {address}: {exc.strerror or exc}") from None
        self._server = server
        log.info("metrics on http://%s/metrics", address)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None


class _StateCollector(Collector):
    def __init__(self, sources: StateSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        yield from self._layers()
        yield from self._cache()
        yield from self._workers()

    def _layers(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("lazylayer_layer_size_bytes", "compressed blob size", labels=["layer"])
        fetched = GaugeMetricFamily("lazylayer_layer_fetched_bytes", "blob bytes fetched so far", labels=["layer"])
        prefetch = GaugeMetricFamily("lazylayer_layer_prefetch_bytes", "prefetch range size", labels=["layer"])
        state = GaugeMetricFamily("lazylayer_layer_state", "1 for the layer's current state",
                                  labels=["layer", "state"])
        for record in self.sources.layers():
            size.add_metric([record.digest], record.blob_size)
            fetched.add_metric([record.digest], record.fetched_bytes)
            prefetch.add_metric([record.digest], record.prefetch_size)
            state.add_metric([record.digest, record.state.value], 1)
        yield from (size, fetched, prefetch, state)

    def _cache(self) -> Iterator[Metric]:
        stats = self.sources.chunk_stats()
        yield GaugeMetricFamily("lazylayer_cache_stored_bytes", "chunk data in LMDB (page-rounded)",
                                value=stats.accounted_bytes)
        yield GaugeMetricFamily("lazylayer_cache_chunks", "chunks in LMDB", value=stats.chunks)
        yield GaugeMetricFamily("lazylayer_cache_budget_bytes", "chunk data cap", value=stats.budget)
        yield CounterMetricFamily("lazylayer_cache_evictions", "chunks evicted", value=stats.evicted_chunks)
        yield CounterMetricFamily("lazylayer_cache_evicted_bytes", "bytes evicted", value=stats.evicted_bytes)

    def _workers(self) -> Iterator[Metric]:
        status = self.sources.pool_status()
        yield GaugeMetricFamily("lazylayer_workers_alive", "workers connected and accepting jobs",
                                value=sum(1 for w in status.workers if w.capacity > 0))
        yield CounterMetricFamily("lazylayer_worker_restarts", "spawned workers restarted",
                                  value=sum(p.restarts for p in status.processes))
        yield CounterMetricFamily("lazylayer_workers_lost", "workers declared dead", value=status.workers_lost)
        yield GaugeMetricFamily("lazylayer_jobs_in_flight", "jobs running on workers", value=status.in_flight)
        queued = GaugeMetricFamily("lazylayer_jobs_queued", "jobs waiting for a worker", labels=["priority"])
        for priority, count in sorted(status.queued.items()):
            queued.add_metric([priority], count)
        yield queued
