"""`lazylayer config show [--config F] [--json]`: the effective configuration and the source of
each value (default, file, environment variable or flag).

``--json`` prints a list of ``{"key", "value", "source", "unit", "doc", "live"}`` objects, one per
knob; ``live`` knobs are applied by a running daemon on SIGHUP, the others need a restart.
"""

from __future__ import annotations

import argparse
import os

from lazylayer.daemon.cli.output import print_json, print_table
from lazylayer.shared.config import load_config

HELP = "show the effective configuration and where each value comes from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help=HELP)
    show.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    show.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    rows = load_config(args.config).show()
    if args.json:
        print_json(rows)
    else:
        print_table(None, ["key", "value", "source", "unit", "SIGHUP"],
                    [[r["key"], r["value"], r["source"], r["unit"], "live" if r["live"] else ""] for r in rows])
    return 0
