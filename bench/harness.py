"""The one benchmark command: `python -m bench.harness` (scripts/bench runs it after setup).

    python -m bench.harness [--quick] [--runs N] [--workdir DIR] [--workers N] [--scale 1 2 4]
                            [--random-reads N] [--build-only] [--containerd-only] [--json] [--write BENCHMARKS.md]

Builds (or reuses) the benchmark image in a local registry under the work dir, measures the
comparisons of bench/README.md over --runs runs, prints a table (or --json) and, with
--write, regenerates BENCHMARKS.md. --quick: a tiny image and one run, every item, for CI.
Needs root, /dev/fuse and Debian's docker-registry (scripts/setup installs them).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import ContextManager

from bench.baselines import data_span
from bench.errors import BenchError
from bench.images import FULL, QUICK, build_image
from bench.lazy import BENCH_CONFIG, unmount_under, write_config
from bench.machine import Machine, require_root
from bench.peer import GoPeer, find_peer
from bench.report import describe_image, print_table, to_json, write_markdown
from bench.runner import Runner, Settings
from lazylayer.daemon.cli.output import Progress, print_json, progress
from lazylayer.shared.errors import LazyLayerError
from lazylayer.workers.registry.local import start_local_registry

DEFAULT_WORKDIR = "/var/tmp/lazylayer-bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny image, 1 run, every item (the CI variant)")
    parser.add_argument("--runs", type=int, help="runs; medians are reported (default 3, --quick 1)")
    parser.add_argument("--workdir", type=Path, default=Path(DEFAULT_WORKDIR),
                        help=f"built image, registry storage, scratch (default {DEFAULT_WORKDIR}; kept between runs)")
    parser.add_argument("--workers", type=int, default=2, help="daemon workers for items 1-5 and 7 (default 2)")
    parser.add_argument("--scale", type=int, nargs="+", default=[1, 2, 4], metavar="N",
                        help="worker counts for item 6 (default 1 2 4)")
    parser.add_argument("--random-reads", type=int, help="4 KiB reads per warm latency sample (default 2000, "
                        "--quick 200)")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the image, describe it, stop")
    parser.add_argument("--containerd-only", action="store_true",
                        help="item 10 alone: containerd rpull + run on both remote snapshotters")
    parser.add_argument("--no-go", action="store_true",
                        help="leave the Go stargz-store column out (default: measured; --quick uses it only if built)")
    parser.add_argument("--only", choices=["fleet"],
                        help="run one item alone: fleet = item 12 (a fleet behind a cold pull-through cache)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--write", type=Path, metavar="FILE", help="also write the results as markdown (BENCHMARKS.md)")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.random_reads is None:
        args.random_reads = 200 if args.quick else 2000
    if args.runs < 1 or args.workers < 1 or min(args.scale) < 1 or args.random_reads < 1:
        parser.error("--runs, --workers, --scale and --random-reads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (BenchError, LazyLayerError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    require_root()
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing (modprobe fuse; in a container, pass the device)")
    recipe = QUICK if args.quick else FULL
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for scratch in ("lazy", "peer"):
        unmount_under(workdir / scratch)  # leftovers of an interrupted run
    machine = Machine.describe()
    config = write_config(workdir / "lazylayer-bench.toml")
    settings = Settings(runs=args.runs, workers=args.workers, scale=tuple(sorted(set(args.scale))),
                        random_reads=args.random_reads, containerd_only=args.containerd_only)
    if args.no_go:
        peer = GoPeer(None, "left out (--no-go)")
    else:
        print("bench: the Go stargz-store peer (built by build.sh when missing: a few minutes once)",
              file=sys.stderr, flush=True)
        peer = find_peer(build=not args.quick)
    registry = start_local_registry(workdir / "registry")
    try:
        image = build_image(workdir, recipe, registry.host, _step)
        if args.build_only:
            print(f"image: {describe_image(image)}")
            return 0
        results = Runner(image, workdir, settings, config, data_span(image), peer,
                         registry.process.pid).run(args.only)
    finally:
        registry.stop()
        for scratch in ("peer", "lazy"):
            unmount_under(workdir / scratch)
    settings_doc = {"recipe": recipe.name, "runs": settings.runs, "workers": settings.workers,
                    "scale": list(settings.scale), "random_reads": settings.random_reads, "config": BENCH_CONFIG}
    document = to_json(results, machine, image, settings_doc)
    if args.json:
        print_json(_finite_or_none(document))
    else:
        print_table(results, machine, image, settings.runs)
    if args.write:
        write_markdown(args.write, results, machine, image, settings_doc, BENCH_CONFIG)
    return 0


def _step(description: str, total: int | None) -> ContextManager[Progress]:
    """A progress bar on a terminal, one log line otherwise (CI logs show where time went)."""
    if not sys.stderr.isatty():
        print(f"bench: {description}", file=sys.stderr, flush=True)
    return progress(description, total)


def _finite_or_none(obj: object) -> object:
    """JSON has no NaN: a figure that could not be computed becomes null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
