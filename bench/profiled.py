"""Item 11: cold start of the Python app with a learned profile recorded on another cache.

Once per benchmark a daemon on a cache of its own runs the app (item 8's way: the three layers
resolved, then ``chroot`` on an overlayfs over their diff dirs) with profiles recorded, and
`lazylayer profile push` stores the run in the registry as an OCI artifact referring to the app
image (the image and its digest stay as they are). Each run then starts a fresh daemon on an
empty cache with ``prefetch.profiles = "registry"``, landmark prefetch and background fetch off
(the image has no landmark: it is item 8's plain tag), and times what item 8 times: store start,
resolve of the three layers (which looks the profile up and starts its replay), the app run
(its reads join the replay's jobs or find their chunks cached), and the total.

The baseline column is item 8's lazylayer figure of the same run with prefetch off (the same
image and daemon without a profile); the Go column is item 8's Go figure with prefetch on (the
Go store on the image rebuilt with a landmark, upstream's answer), when the peer ran.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from bench.errors import BenchError
from bench.images import BenchImage
from bench.lazy import start_daemon
from bench.machine import drop_caches
from bench.peers import Peers, layer_diff
from bench.results import Results

PARTS = ("total", "daemon", "resolve", "run")
#: the recording daemon: every knob as in item 8's "prefetch off" (profiles are recorded by default)
RECORD_CONFIG = "[daemon]\nlog_level = \"WARNING\"\n\n[prefetch]\nenabled = false\n\n[background]\nenabled = false\n"
#: the measured daemon: the same, but the profile is looked up in the registry and replayed
REPLAY_CONFIG = ("[daemon]\nlog_level = \"WARNING\"\n\n[prefetch]\nenabled = false\nprofiles = \"registry\"\n\n"
                 "[background]\nenabled = false\n")


class ProfiledStart:
    def __init__(self, image: BenchImage, area: Path, results: Results, peers: Peers, workers: int) -> None:
        self.image, self.area, self.results, self.peers, self.workers = image, area, results, peers, workers
        self.record_config = _write(area / "lazylayer-record.toml", RECORD_CONFIG)
        self.replay_config = _write(area / "lazylayer-replay.toml", REPLAY_CONFIG)
        self.recorded = False
        n = len(image.app_layers)
        titles = {"total": "Python app cold start with a learned profile, total",
                  "daemon": "  store start", "resolve": f"  resolve {n} layers (profile looked up, replay started)",
                  "run": "  app run on overlayfs"}
        for part in PARTS:
            results.row(11, f"profile_{part}", titles[part], "item 8 without a profile (prefetch off)")

    def run(self, run: int, say: Callable[[str], None]) -> None:
        if not self.recorded:
            say(f"run {run}: recording the app's profile on another cache and pushing it")
            self._record()
            self.recorded = True
        say(f"run {run}: app cold start with the profile from the registry")
        self._measure()
        rows = self.results.rows
        for part in PARTS:  # the comparisons, from item 8 of this same run
            row = rows[f"profile_{part}"]
            lazy, go = rows[f"app_{part}_lazy"].lazy, rows[f"app_{part}_prefetch"].go
            row.base.extend(lazy[len(row.base):])
            row.go.extend(go[len(row.go):])

    def _record(self) -> None:
        cache = self.area / "record-cache"
        shutil.rmtree(cache, ignore_errors=True)
        daemon = start_daemon(self.area / "record", cache, self.workers, self.record_config)
        try:
            self._start_app(daemon.mountpoint)
            daemon.push_profile(self.image.app_ref)
        finally:
            daemon.stop()
            shutil.rmtree(cache, ignore_errors=True)

    def _measure(self) -> None:
        cache = self.area / "cache"
        start = time.perf_counter()  # from here, as item 8 times its total
        shutil.rmtree(cache, ignore_errors=True)
        drop_caches()
        daemon_start = time.perf_counter()
        daemon = start_daemon(self.area / "replay", cache, self.workers, self.replay_config, until_mounted=True)
        started = time.perf_counter() - daemon_start
        try:
            resolved, ran = self._start_app(daemon.mountpoint)
            total = time.perf_counter() - start
        finally:
            daemon.stop()
            shutil.rmtree(cache, ignore_errors=True)
        for part, seconds in zip(PARTS, (total, started, resolved, ran)):
            self.results.rows[f"profile_{part}"].lazy.append(seconds)

    def _start_app(self, mountpoint: Path) -> tuple[float, float]:
        """Item 8's start: list each diff dir, then run the app on an overlay; both timed."""
        diffs = [layer_diff(mountpoint, self.image.app_ref, layer.digest) for layer in self.image.app_layers]
        start = time.perf_counter()
        for diff in diffs:
            os.listdir(diff)
        resolved = time.perf_counter() - start
        start = time.perf_counter()
        output = self.peers.run_on_overlay(diffs)
        ran = time.perf_counter() - start
        if output != self.image.app_output:
            raise BenchError(f"the app printed {output!r} with a profile, {self.image.app_output!r} on this machine")
        return resolved, ran


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
