"""`lazylayer snapshotter [--config F] [--address SOCK] [--root DIR]`: the containerd remote
snapshotter, in the foreground (daemon/snapshotter/). It reaches remote layers through the front's
layer store at ``daemon.mountpoint``; run it beside `lazylayer daemon` and register it in
containerd's config as ``[proxy_plugins.lazylayer] type = "snapshot" address = SOCK``.

`lazylayer snapshotter --list [--json]` prints the snapshots it keeps (from its metadata, no
running process needed)."""

from __future__ import annotations

import argparse
import dataclasses
import os

from lazylayer.daemon.cli.output import print_json, print_table
from lazylayer.shared.config import Config, load_config
from lazylayer.shared.logs import setup_logging
from lazylayer.shared.perms import private_umask

HELP = "run the containerd snapshotter (gRPC, proxy plugin) over the layer store, in the foreground"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    parser.add_argument("--address", help="unix socket to serve (snapshotter.address)")
    parser.add_argument("--root", help="metadata and snapshot dirs (snapshotter.root)")
    parser.add_argument("--list", action="store_true", help="print the snapshots and exit")
    parser.add_argument("--json", action="store_true", help="with --list: machine-readable output")


def run(args: argparse.Namespace) -> int:
    flags = {"snapshotter.address": args.address, "snapshotter.root": args.root}

    def load() -> Config:
        return load_config(args.config or None, overrides={k: v for k, v in flags.items() if v is not None}).config

    config = load()
    if args.list:
        return _list(config.snapshotter.root, args.json)
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    private_umask()  # its socket is root's from the bind on, not only after the chmod that follows
    from lazylayer.daemon.snapshotter.service import serve_forever  # grpc: only when serving

    return serve_forever(config, load)


def _list(root: str, as_json: bool) -> int:
    from lazylayer.daemon.snapshotter.metadata import read_snapshots

    snapshots = read_snapshots(root) or []
    if as_json:
        print_json([dataclasses.asdict(s) | {"kind": s.kind.name.lower()} for s in snapshots])
        return 0
    print_table("snapshots", ["name", "kind", "parent", "remote layer"],
                [[s.name, s.kind.name.lower(), s.parent, f"{s.remote_ref} {s.remote_digest[:19]}" if s.remote else ""]
                 for s in snapshots])
    return 0
