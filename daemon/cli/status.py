"""`lazylayer status [--json]`: what the running daemon serves - layers (Info, state, last
error), failed resolves, user mounts, workers, cache use, learned profiles (recordings, and the
chunks replays fetched: read since, or not) - and the containerd snapshotter's snapshots by kind
(read from its metadata at ``snapshotter.root``).

Times are wall-clock (``read_time``, a failure's ``when``: seconds since the epoch in ``--json``,
local time here); durations say "s". Sizes are bytes in ``--json`` and carry a unit here.
``source`` is the handler a layer's bytes come from (registry, urls, oci-layout or a plug-in;
``source_location`` says where) and ``decompressor`` what decodes its chunks (gzip, zstd or a
plug-in), as recorded when the layer was registered.
``fetched`` counts compressed bytes downloaded from the layer's source (chunks, prefetch,
background fetch, and the whole-blob download behind its ``blob`` file); the cache holds
decompressed chunks, so its use can exceed the fetched bytes.
"""

from __future__ import annotations

import argparse
import time

from lazylayer.daemon.cli.output import human_size, print_json, print_table
from lazylayer.daemon.control import add_client_arguments, call, client_run_dir
from lazylayer.daemon.snapshotter.metadata import read_snapshots, summarize
from lazylayer.shared.config import load_config

HELP = "show the daemon's layers, errors, mounts, workers and cache use"

#: printed under the tables: what the two numbers people ask about mean
LEGEND = ("refs: holders of a layer (mounts, layer-store users such as podman); an unreferenced layer is "
          "released after prefetch.resolve_ttl.\n"
          "source: where the layer's bytes come from (registry, urls, oci-layout, a plug-in); format: its decompressor.\n"
          "fetched: compressed bytes downloaded from its source; the cache holds decompressed chunks, "
          "so cache use can exceed the fetched bytes.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_client_arguments(parser)


def clock(when: float) -> str:
    """A wall-clock instant (seconds since the epoch) as local time; "-" for never."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when > 0 else "-"


def run(args: argparse.Namespace) -> int:
    status = call(client_run_dir(args), "status", timeout=30.0)
    # the containerd snapshotter's snapshots (its metadata; absent where it never ran)
    snapshots = read_snapshots(load_config(args.config or None).config.snapshotter.root)
    status["snapshots"] = summarize(snapshots) if snapshots is not None else None
    if args.json:
        print_json(status)
        return 0
    takeovers = status.get("takeovers", 0)
    print(f"daemon pid {status['pid']} serving {status['mountpoint']}"
          + (f" (took the FUSE connection over from an earlier front; takeovers: {takeovers})" if takeovers else ""))
    if not status["dircache"]["active"]:
        print(f"directory listings go through FUSE every time: {status['dircache']['problem']}")
    print_table("layers", ["ref", "digest", "state", "size", "fetched", "prefetch", "last read", "refs", "source",
                           "format", "error"],
                [[l["ref"], l["digest"][:19], l["info"]["state"], human_size(l["info"]["size"]),
                  human_size(l["info"]["fetched_size"]), human_size(l["info"]["prefetch_size"]),
                  clock(l["info"]["read_time"]), l["references"], l["source"] or "-", l["decompressor"] or "-",
                  l["error"]]
                 for l in status["layers"]])
    if status["failures"]:
        print_table("failed resolves", ["ref", "digest", "kind", "when", "error"],
                    [[f["ref"], f["digest"][:19], f["kind"], clock(f["when"]), f["error"]]
                     for f in status["failures"]])
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
    if status.get("mirrors"):
        print_table("mirrors", ["host", "ranged reads", "whole blobs in a row", "asked again in"],
                    [[m["host"], "served" if m["state"] == "ranged" else "whole blob sent: next source used",
                      m["strikes"], f"{m['retry_in']:.1f} s"] for m in status["mirrors"]])
    cache = status["cache"]
    queued = ", ".join(f"{priority} {count}" for priority, count in workers["queued"].items())
    print(f"cache: {cache['chunks']} chunks, {human_size(cache['accounted_bytes'])} of "
          f"{human_size(cache['budget'])} (decompressed); queued jobs: {queued}")
    if status["snapshots"] is not None:
        print("containerd snapshots: " + ", ".join(f"{count} {kind}" for kind, count in status["snapshots"].items()))
    profiles = status.get("profiles")
    if profiles:
        print(f"profiles ({profiles['mode']}): {len(profiles['recording'])} recording, "
              f"{profiles['runs_recorded']} run(s) recorded; replayed {profiles['prefetched']} chunks: "
              f"{profiles['hits']} read since (hits), {profiles['waste']} not (waste)")
    print(LEGEND)
    return 0
