"""Items 8 and 9: lazylayer's layer store against the Go stargz-store's, side by side.

Both stores serve MNT/<base64(ref)>/<layer digest>/diff, so every figure is taken by the same code
on the same path shape, in the same run, from the same loopback registry and the same eStargz
images (lazylayer-converted), each with a fresh cache and a freshly started store, right after
drop_caches. lazylayer and Go alternate (which goes first flips every run), once with prefetch
off (lazylayer: prefetch.enabled and background.enabled false; Go: noprefetch and
no_background_fetch) and once with both on (the app image then carries a prefetch landmark).

- item 8, a Python app's cold start: the store started, the app image's three layers resolved
  (`ls` of each diff dir), then ``chroot`` on a kernel overlayfs over the three diff dirs running
  the app (bench/app.py) - each part timed, and the total;
- item 9, the largest layer (rootfs): resolve (`ls` its diff dir), first 4 KiB of a small file
  on a fresh store (resolve included), find + stat of the whole layer cold and warm; and the cold
  sequential read of the data file through its layer's diff dir.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from bench import app
from bench.errors import BenchError
from bench.images import SITE_PACKAGES, BenchImage, LayerInfo
from bench.lazy import start_daemon, unmount_under
from bench.machine import drop_caches
from bench.measure import PAGE, find_stat, read_sequential
from bench.peer import GoPeer, start_go_store
from bench.results import Results

MODES = ("lazy", "prefetch")
MODE_TITLE = {"lazy": "prefetch off", "prefetch": "prefetch on"}
SIDES = ("lazylayer", "go")

#: lazylayer's config per mode (log level as in the other items)
LAZY_CONFIG = {
    "lazy": "[daemon]\nlog_level = \"WARNING\"\n\n[prefetch]\nenabled = false\n\n[background]\nenabled = false\n",
    "prefetch": "[daemon]\nlog_level = \"WARNING\"\n\n[prefetch]\nenabled = true\n\n[background]\nenabled = true\n",
}


def layer_diff(mountpoint: Path, ref: str, digest: str) -> Path:
    """MNT/<base64(ref)>/<digest>/diff, the layout both stores serve."""
    name = base64.b64encode(ref.encode()).decode()
    if "/" in name:
        raise BenchError(f"base64 of {ref!r} contains '/': no layer store can serve it (pick another tag)")
    return mountpoint / name / digest / "diff"


def small_file(image: BenchImage) -> str:
    """A small start-up file of the rootfs that the app does not open (so not in its landmark)."""
    for name in image.first_files:
        if name.startswith("etc/") and name not in image.app_files:
            return name
    return image.first_files[0]


class Peers:
    def __init__(self, image: BenchImage, area: Path, results: Results, peer: GoPeer, workers: int) -> None:
        self.image, self.area, self.results, self.peer, self.workers = image, area, results, peer, workers
        #: sha256 of the data file as each side served it (run 1)
        self.digests: dict[str, str] = {}
        self.configs = {}
        for mode, text in LAZY_CONFIG.items():
            path = area / f"lazylayer-{mode}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self.configs[mode] = path
        self._declare_rows()

    def _declare_rows(self) -> None:
        r, img = self.results, self.image
        rootfs = img.app_layers[0]
        for mode in MODES:
            t = MODE_TITLE[mode]
            r.row(8, f"app_total_{mode}", f"Python app cold start, total ({t})", None)
            r.row(8, f"app_daemon_{mode}", f"  store start ({t})", None)
            r.row(8, f"app_resolve_{mode}", f"  resolve {len(img.app_layers)} layers ({t})", None)
            r.row(8, f"app_run_{mode}", f"  app run on overlayfs ({t})", None)
        for mode in MODES:
            t = MODE_TITLE[mode]
            r.row(9, f"store_resolve_{mode}",
                  f"resolve the largest layer ({rootfs.entries} entries, `ls` its diff) ({t})", None)
            r.row(9, f"store_first_{mode}", f"first 4 KiB of /{small_file(img)}, resolve included ({t})", None)
            r.row(9, f"store_seq_{mode}", f"cold sequential read, {img.data_size >> 20} MiB file ({t})", None,
                  nbytes=img.data_size)
            r.row(9, f"store_find_cold_{mode}", f"find + stat of the largest layer, cold ({t})", None)
            r.row(9, f"store_find_warm_{mode}", f"find + stat of the largest layer, warm ({t})", None)

    def _add(self, side: str, key: str, seconds: float) -> None:
        row = self.results.rows[key]
        (row.lazy if side == "lazylayer" else row.go).append(seconds)

    # -- stores ------------------------------------------------------------------------------

    @contextmanager
    def _store(self, side: str, mode: str, *, until_mounted: bool) -> Iterator[tuple[Path, float]]:
        """A fresh store of ``side`` (empty cache), its mountpoint and how long starting took;
        drop_caches runs right before the start. ``until_mounted``: lazylayer is used as soon as
        its mount is up (item 8, as a runtime would); otherwise once its workers are connected
        too, so that item 9's figures time the operation alone (Go has no workers)."""
        area = self.area / side
        shutil.rmtree(area / "cache", ignore_errors=True)
        drop_caches()
        start = time.perf_counter()
        if side == "lazylayer":
            daemon = start_daemon(area, area / "cache", self.workers, self.configs[mode], until_mounted=until_mounted)
            stop, mountpoint = daemon.stop, daemon.mountpoint
        else:
            store = start_go_store(self.peer, area, mode)
            stop, mountpoint = store.stop, store.mountpoint
        started = time.perf_counter() - start
        try:
            yield mountpoint, started
        finally:
            unmount_under(self.area / "overlay")
            stop()
            shutil.rmtree(area / "cache", ignore_errors=True)
            shutil.rmtree(area / "root", ignore_errors=True)

    def _app_image(self, mode: str) -> tuple[str, tuple[LayerInfo, ...]]:
        img = self.image
        return (img.app_prefetch_ref, img.app_prefetch_layers) if mode == "prefetch" else \
            (img.app_ref, img.app_layers)

    # -- one run -----------------------------------------------------------------------------

    def sides(self, run: int) -> tuple[str, ...]:
        """Which sides run, lazylayer first on odd runs and Go first on even ones."""
        sides = SIDES if self.peer.available else ("lazylayer",)
        return sides if run % 2 else tuple(reversed(sides))

    def run(self, run: int, say: Callable[[str], None]) -> None:
        for mode in MODES:
            for measure in (self.app_start, self.layer_ops, self.first_bytes):
                for side in self.sides(run):
                    say(f"run {run}: {side}, {MODE_TITLE[mode]}: {measure.__name__.replace('_', ' ')}")
                    measure(side, mode, run)
        self._check_same_bytes()

    def app_start(self, side: str, mode: str, run: int) -> None:
        ref, layers = self._app_image(mode)
        start = time.perf_counter()
        with self._store(side, mode, until_mounted=True) as (mountpoint, started):
            diffs = [layer_diff(mountpoint, ref, layer.digest) for layer in layers]
            resolve_start = time.perf_counter()
            for diff in diffs:
                os.listdir(diff)
            resolved = time.perf_counter() - resolve_start
            app_start = time.perf_counter()
            output = self.run_on_overlay(diffs)
            ran = time.perf_counter() - app_start
            total = time.perf_counter() - start
        if output != self.image.app_output:
            raise BenchError(f"the app printed {output!r} on {side}'s store, {self.image.app_output!r} on this machine")
        for key, seconds in (("total", total), ("daemon", started), ("resolve", resolved), ("run", ran)):
            self._add(side, f"app_{key}_{mode}", seconds)

    def run_on_overlay(self, diffs: list[Path]) -> str:
        """Mount overlayfs (top layer first in lowerdir) with a scratch upper dir, run the app."""
        base = self.area / "overlay"
        shutil.rmtree(base, ignore_errors=True)
        for name in ("upper", "work", "merged"):
            (base / name).mkdir(parents=True)
        # short links: the diff paths hold ':' (sha256:...), overlayfs's lowerdir separator
        links = []
        for i, diff in enumerate(diffs):
            (base / f"l{i}").symlink_to(diff)
            links.append(base / f"l{i}")
        lower = ":".join(str(d) for d in reversed(links))
        options = f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}"
        done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(base / "merged")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"mount -t overlay over {lower} failed: {done.stderr.strip()}")
        try:
            return app.run_app(base / "merged", SITE_PACKAGES)
        finally:
            subprocess.run(["umount", str(base / "merged")], capture_output=True)

    def layer_ops(self, side: str, mode: str, run: int) -> None:
        img = self.image
        ref, layers = self._app_image(mode)
        with self._store(side, mode, until_mounted=False) as (mountpoint, _):
            rootfs = layer_diff(mountpoint, ref, layers[0].digest)
            drop_caches()
            start = time.perf_counter()
            os.listdir(rootfs)
            self._add(side, f"store_resolve_{mode}", time.perf_counter() - start)

            drop_caches()
            walk = find_stat(rootfs)
            self._add(side, f"store_find_cold_{mode}", walk.seconds)
            self._add(side, f"store_find_warm_{mode}", find_stat(rootfs).seconds)
            self.results.extra(f"entries_rootfs_{side}", walk.entries)

            data_dir = layer_diff(mountpoint, img.esgz_ref, img.esgz_layers[-1].digest)
            os.listdir(data_dir)  # resolve outside the timing: the read is what is measured
            drop_caches()
            seconds, nbytes = read_sequential(data_dir / img.data_path)
            if nbytes != img.data_size:
                raise BenchError(f"{side}: read {nbytes} bytes of {img.data_path}, expected {img.data_size}")
            self._add(side, f"store_seq_{mode}", seconds)
            if run == 1 and mode == "lazy":  # outside the timing
                self.digests[side] = _sha256(data_dir / img.data_path)

    def first_bytes(self, side: str, mode: str, run: int) -> None:
        ref, layers = self._app_image(mode)
        with self._store(side, mode, until_mounted=False) as (mountpoint, _):
            path = layer_diff(mountpoint, ref, layers[0].digest) / small_file(self.image)
            drop_caches()
            start = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                got = f.read(PAGE)
            self._add(side, f"store_first_{mode}", time.perf_counter() - start)
            if not got:
                raise BenchError(f"{side}: {path} read empty")

    def _check_same_bytes(self) -> None:
        """The data file as each store served it must be the same bytes (Go reads our eStargz)."""
        if len(set(self.digests.values())) > 1:
            raise BenchError(f"the data file differs between the stores: {self.digests}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
