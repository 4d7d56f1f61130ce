"""`lazylayer prefetch REF`: resolve an image through the daemon and fetch each layer's
prefetch range (the landmark range, or prefetch.size bytes for landmark-less layers) now."""

from __future__ import annotations

import argparse

from lazylayer.daemon.cli.output import print_json, progress
from lazylayer.daemon.cli._image import daemon_ref
from lazylayer.daemon.control import add_client_arguments, call, client_run_dir

HELP = "fetch the prefetch range of every layer of an image now (through the daemon)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF", type=daemon_ref, help="image reference or oci:PATH[:TAG]")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return warm(args, "prefetch_layer", "prefetching")


def warm(args: argparse.Namespace, op: str, verb: str) -> int:
    """Resolve REF, then run ``op`` on each layer with a progress bar of compressed bytes."""
    run_dir = client_run_dir(args)
    image = call(run_dir, "image", {"ref": args.ref})
    results = []
    with progress(f"{verb} {args.ref}", sum(l["size"] for l in image["layers"])) as bar:
        for layer in image["layers"]:
            results.append({"digest": layer["digest"],
                            **call(run_dir, op, {"ref": args.ref, "digest": layer["digest"]}, timeout=3600.0)})
            bar.advance(layer["size"])
    if args.json:
        print_json(results)
    else:
        for r in results:
            info = r["info"]
            print(f"{r['digest']}  {info['state']:<11} fetched {info['fetched_size']} of {info['size']} bytes"
                  + (f"  error: {r['error']}" if r["error"] else ""))
    return 1 if any(r["error"] for r in results) else 0
