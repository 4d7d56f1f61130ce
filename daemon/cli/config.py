"""`lazylayer config show [--config F] [--json]`: the effective configuration and the source of
each value (default, file, environment variable or flag). The first line names the file that was
read: ``--config F``, else ``LAZYLAYER_CONFIG``, else /etc/lazylayer/lazylayer.toml when it exists.

``--json`` prints a list of ``{"key", "value", "source", "unit", "doc", "live"}`` objects, one per
knob; ``live`` knobs are applied by a running daemon on SIGHUP, the others need a restart.
"""

from __future__ import annotations

import argparse
import os

from lazylayer.daemon.cli.output import print_json, print_table
from lazylayer.shared.config import DEFAULT_CONFIG_PATH, load_config

HELP = "show the effective configuration and where each value comes from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help=HELP)
    show.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    show.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    rows = loaded.show()
    if args.json:
        print_json(rows)
    else:
        print(f"config file: {loaded.file}" if loaded.file else
              f"config file: none ({DEFAULT_CONFIG_PATH} does not exist; --config or LAZYLAYER_CONFIG names one)")
        print_table(None, ["key", "value", "source", "unit", "SIGHUP"],
                    [[r["key"], r["value"], r["source"], r["unit"], "live" if r["live"] else ""] for r in rows])
    return 0
