"""One benchmark run after another: the baselines on local disk, then lazylayer in four kinds of
daemon session, each measurement preceded by the cache state it names.

- cold    = fresh cache dir + fresh daemon + drop_caches (page, dentry and inode caches);
- warm LMDB = the same cache dir, a new daemon, drop_caches;
- page cache = the file was just read through the same mount.
Baselines get the same treatment (drop_caches before every "cold" or "dropped" figure).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from bench.baselines import CompressedSpan, full_pull, get_and_gunzip
from bench.containerd import ContainerdItem
from bench.errors import BenchError
from bench.fleet import measure_fleet
from bench.images import BenchImage
from bench.lazy import LazyDaemon, lazy_session
from bench.machine import drop_caches
from bench.peer import GoPeer
from bench.peers import Peers
from bench.profiled import ProfiledStart
from bench.measure import find_stat, percentile, random_reads, read_files, read_sequential, spread_offsets, \
    uniform_offsets
from bench.results import Results
from lazylayer.daemon.cli.output import progress


@dataclass(frozen=True)
class Settings:
    runs: int
    #: workers of the daemon for items 1-5 and 7
    workers: int
    #: worker counts of item 6
    scale: tuple[int, ...]
    #: 4 KiB reads per warm random-read sample
    random_reads: int
    seed: int = 1
    #: item 10 alone (`--containerd-only`)
    containerd_only: bool = False


def _say(message: str) -> None:
    """Step lines for logs; on a terminal the progress bar says it instead."""
    if not sys.stderr.isatty():
        print(f"bench: {message}", file=sys.stderr, flush=True)


class Runner:
    def __init__(self, image: BenchImage, workdir: Path, settings: Settings, config: Path, span: CompressedSpan,
                 peer: GoPeer, origin_pid: int) -> None:
        self.image, self.workdir, self.settings, self.config, self.span = image, workdir, settings, config, span
        self.origin_pid = origin_pid
        self.results = Results(peer=peer.to_dict())
        self.local = workdir / "local"
        self.area = workdir / "lazy"
        size = image.data_size
        self.spread = spread_offsets(size, image.chunk_size, settings.seed)
        self.uniform = uniform_offsets(size, settings.random_reads, settings.seed)
        self._declare_rows()
        self.peers = Peers(image, workdir / "peer", self.results, peer, settings.workers)
        self.containerd = ContainerdItem(image, workdir / "ctrd", self.results, peer, settings.workers)
        self.profiled = ProfiledStart(image, workdir / "profiled", self.results, self.peers, settings.workers)

    # -- rows ----------------------------------------------------------------------------------

    def _declare_rows(self) -> None:
        r, img, n = self.results, self.image, len(self.image.first_files)
        size = img.data_size
        mib = f"{size >> 20} MiB"
        r.row(1, "ttfb", f"mount + read {n} start-up files ({img.first_bytes / (1 << 20):.1f} MiB)",
              "full pull (download, gunzip, untar every layer) + read them")
        r.row(2, "cold_seq", f"cold sequential read, {mib} file", "1 HTTP GET + gunzip of its bytes (limit)",
              nbytes=size)
        r.row(3, "warm_pc", f"warm re-read (page cache), {mib}", "local disk, page cache", nbytes=size)
        r.row(4, "warm_lmdb", f"warm read from LMDB, page cache dropped, {mib}", "local disk, page cache dropped",
              nbytes=size)
        r.row(5, "find_cold", "find + stat of the whole image, cold", "local disk, caches dropped")
        r.row(5, "find_warm", "find + stat of the whole image, warm", "local disk, warm")
        cores = os.cpu_count() or 1
        for w in self.settings.scale:
            r.row(6, f"cold_seq_w{w}", f"cold sequential read, {w} worker{'s' if w > 1 else ''} on {cores} cores",
                  "1 HTTP GET + gunzip (limit)", nbytes=size)
        for key, what, base in (("rand_cold", "cold (empty cache)", "local disk, page cache dropped"),
                                ("rand_lmdb", "warm LMDB (page cache dropped)", "local disk, page cache dropped"),
                                ("rand_pc", "page cache", "local disk, page cache")):
            for pct in (50, 99):
                r.row(7, f"{key}_p{pct}", f"random 4 KiB, {what}: p{pct}", base, unit="us")

    def _latencies(self, key: str, side: str, latencies: list[float]) -> None:
        for pct in (50, 99):
            getattr(self.results.rows[f"{key}_p{pct}"], side).append(percentile(latencies, pct))

    # -- runs ----------------------------------------------------------------------------------

    def run(self, only: str | None = None) -> Results:
        """Every item, or with ``only="fleet"`` item 12 alone."""
        s = self.settings
        extra_scale = [w for w in s.scale if w != s.workers]
        for run in range(1, s.runs + 1):
            steps: list[tuple[str, Callable[[int], None]]] = [
                ("full pull + local disk", self.baselines), ("lazylayer cold", self.lazy_cold),
                ("lazylayer warm LMDB", self.lazy_warm), ("lazylayer cold random reads", self.lazy_cold_random),
                *((f"lazylayer cold, {w} workers", lambda run, w=w: self.lazy_scale(run, w)) for w in extra_scale),
                ("layer stores: lazylayer and the Go stargz-store", lambda run: self.peers.run(run, _say)),
                ("app start with a learned profile", lambda run: self.profiled.run(run, _say)),
                ("a fleet behind a cold pull-through cache", self.fleet),
                ("containerd: lazylayer and containerd-stargz-grpc", lambda run: self.containerd.run(run, _say)),
            ]
            if s.containerd_only:
                steps = steps[-1:]
            elif only == "fleet":
                steps = steps[-2:-1]
            with progress(f"run {run}/{s.runs}", len(steps), unit_bytes=False) as bar:
                for name, step in steps:
                    _say(f"run {run}/{s.runs}: {name}")
                    step(run)
                    bar.advance(1)
        shutil.rmtree(self.area, ignore_errors=True)
        shutil.rmtree(self.local, ignore_errors=True)  # 1 GiB of scratch; every run unpacks it anew
        shutil.rmtree(self.workdir / "peer", ignore_errors=True)
        shutil.rmtree(self.workdir / "profiled", ignore_errors=True)
        shutil.rmtree(self.workdir / "ctrd", ignore_errors=True)
        if s.containerd_only:
            self.results.rows = {k: r for k, r in self.results.rows.items() if r.item == 10}
        return self.results

    def fleet(self, run: int) -> None:
        measure_fleet(self.image, self.workdir, self.config, self.settings.workers, self.results.extra, drop_caches,
                      self.origin_pid)

    def baselines(self, run: int) -> None:
        rows, img = self.results.rows, self.image
        files = [self.local / p for p in img.first_files]
        shutil.rmtree(self.local, ignore_errors=True)  # the previous run's tree, outside the timing
        drop_caches()
        start = time.perf_counter()
        full_pull(img, self.local)
        read_files(files)
        rows["ttfb"].base.append(time.perf_counter() - start)

        drop_caches()
        start = time.perf_counter()
        got = get_and_gunzip(img, self.span)
        limit = time.perf_counter() - start
        if got != img.data_size:
            raise BenchError(f"the limit's GET + gunzip gave {got} bytes, expected {img.data_size}")
        rows["cold_seq"].base.append(limit)
        for w in self.settings.scale:
            rows[f"cold_seq_w{w}"].base.append(limit)

        data = self.local / img.data_path
        read_sequential(data)
        rows["warm_pc"].base.append(read_sequential(data)[0])
        drop_caches()
        rows["warm_lmdb"].base.append(read_sequential(data)[0])

        drop_caches()
        walk = find_stat(self.local)
        rows["find_cold"].base.append(walk.seconds)
        rows["find_warm"].base.append(find_stat(self.local).seconds)
        self.results.extra("entries_local", walk.entries)

        drop_caches()
        self._latencies("rand_cold", "base", random_reads(data, self.spread))
        drop_caches()
        self._latencies("rand_lmdb", "base", random_reads(data, self.uniform))
        read_sequential(data)
        self._latencies("rand_pc", "base", random_reads(data, self.uniform))

    def _session(self, tag: str, workers: int, *, fresh: bool) -> ContextManager[LazyDaemon]:
        cache = self.area / f"cache-{tag}"
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        return lazy_session(self.area / f"daemon-{tag}", cache, workers, self.config)

    def _mount(self, daemon: LazyDaemon) -> tuple[Path, float]:
        target = self.area / "image"
        start = time.perf_counter()
        daemon.mount(self.image.esgz_ref, target)
        return target, time.perf_counter() - start

    def _cold_read(self, target: Path) -> float:
        drop_caches()
        seconds, nbytes = read_sequential(target / self.image.data_path)
        if nbytes != self.image.data_size:
            raise BenchError(f"read {nbytes} bytes of {self.image.data_path} through the mount, "
                             f"expected {self.image.data_size}")
        return seconds

    def lazy_cold(self, run: int) -> None:
        rows, img = self.results.rows, self.image
        with self._session("a", self.settings.workers, fresh=True) as daemon:
            drop_caches()
            start = time.perf_counter()
            target, mount = self._mount(daemon)
            read_files(target / p for p in img.first_files)
            rows["ttfb"].lazy.append(time.perf_counter() - start)
            self.results.extra("mount_cold_s", mount)

            drop_caches()
            walk = find_stat(target)
            rows["find_cold"].lazy.append(walk.seconds)
            rows["find_warm"].lazy.append(find_stat(target).seconds)
            self.results.extra("entries_lazylayer", walk.entries)

            cold = self._cold_read(target)
            rows["cold_seq"].lazy.append(cold)
            if self.settings.workers in self.settings.scale:
                rows[f"cold_seq_w{self.settings.workers}"].lazy.append(cold)
            data = target / img.data_path
            rows["warm_pc"].lazy.append(read_sequential(data)[0])
            self._latencies("rand_pc", "lazy", random_reads(data, self.uniform))
            if run == 1:
                self._check_same(data, self.local / img.data_path)

    def lazy_warm(self, run: int) -> None:
        rows = self.results.rows
        with self._session("a", self.settings.workers, fresh=False) as daemon:
            target, mount = self._mount(daemon)
            self.results.extra("mount_warm_s", mount)
            data = target / self.image.data_path
            drop_caches()
            rows["warm_lmdb"].lazy.append(read_sequential(data)[0])
            drop_caches()
            self._latencies("rand_lmdb", "lazy", random_reads(data, self.uniform))
        shutil.rmtree(self.area / "cache-a", ignore_errors=True)

    def lazy_cold_random(self, run: int) -> None:
        with self._session("c", self.settings.workers, fresh=True) as daemon:
            target, _ = self._mount(daemon)
            drop_caches()
            self._latencies("rand_cold", "lazy", random_reads(target / self.image.data_path, self.spread))
        shutil.rmtree(self.area / "cache-c", ignore_errors=True)

    def lazy_scale(self, run: int, workers: int) -> None:
        with self._session(f"w{workers}", workers, fresh=True) as daemon:
            target, _ = self._mount(daemon)
            self.results.rows[f"cold_seq_w{workers}"].lazy.append(self._cold_read(target))
        shutil.rmtree(self.area / f"cache-w{workers}", ignore_errors=True)

    @staticmethod
    def _check_same(ours: Path, theirs: Path) -> None:
        """Speed means nothing if the bytes are wrong: the file read through the mount must be
        the file the full pull unpacked (once per benchmark, outside any timing)."""
        def digest(path: Path) -> str:
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()

        if digest(ours) != digest(theirs):
            raise BenchError(f"{ours} differs from the fully pulled {theirs}")
