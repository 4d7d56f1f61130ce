"""`lazylayer fetch REF`: resolve an image through the daemon and fetch every layer whole now
(the background walk, run to its end; the blob digest is checked when each layer completes)."""

from __future__ import annotations

import argparse

from lazylayer.daemon.cli.prefetch import warm
from lazylayer.daemon.cli._image import daemon_ref
from lazylayer.daemon.control import add_client_arguments

HELP = "fetch every layer of an image completely now (through the daemon)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF", type=daemon_ref, help="image reference or oci:PATH[:TAG]")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return warm(args, "fetch_layer", "fetching")
