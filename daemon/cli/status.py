"""`lazylayer status [--json]`: what the running daemon serves - layers (Info, state, last
error), failed resolves, user mounts, workers, cache use."""

from __future__ import annotations

import argparse

from lazylayer.daemon.cli.output import print_json, print_table
from lazylayer.daemon.control import add_client_arguments, call, client_run_dir

HELP = "show the daemon's layers, errors, mounts, workers and cache use"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_client_arguments(parser)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def run(args: argparse.Namespace) -> int:
    status = call(client_run_dir(args), "status", timeout=30.0)
    if args.json:
        print_json(status)
        return 0
    print(f"daemon pid {status['pid']} serving {status['mountpoint']}")
    print_table("layers", ["ref", "digest", "state", "size", "fetched", "prefetch", "refs", "error"],
                [[l["ref"], l["digest"][:19], l["info"]["state"], _mib(l["info"]["size"]),
                  _mib(l["info"]["fetched_size"]), _mib(l["info"]["prefetch_size"]), l["references"], l["error"]]
                 for l in status["layers"]])
    if status["failures"]:
        print_table("failed resolves", ["ref", "digest", "kind", "error"],
                    [[f["ref"], f["digest"][:19], f["kind"], f["error"]] for f in status["failures"]])
    if status["mounts"]:
        print_table("mounts", ["dir", "ref", "mode"],
                    [[m["target"], m["ref"], "writable" if m["writable"] else "read-only"] for m in status["mounts"]])
    workers = status["workers"]
    print_table("workers", ["id", "pid", "capacity", "in flight", "done", "failed", "last heartbeat"],
                [[w["id"], w["pid"], w["capacity"], w["in_flight"], w["jobs_done"], w["jobs_failed"],
                  f"{w['last_heartbeat_age']:.1f} s ago"] for w in workers["workers"]])
    if workers["processes"]:
        print_table("spawned workers", ["slot", "pid", "running", "restarts", "backoff"],
                    [[p["slot"], p["pid"] or "-", "yes" if p["running"] else "no", p["restarts"],
                      f"{p['backoff']:.1f} s"] for p in workers["processes"]])
    cache = status["cache"]
    print(f"cache: {cache['chunks']} chunks, {_mib(cache['accounted_bytes'])} of {_mib(cache['budget'])}; "
          f"queued jobs {workers['queued']}")
    return 0
