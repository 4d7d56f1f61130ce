"""`lazylayer cat BLOB PATH [--offset N] [--size N]`: one file's bytes through the random-access
reader, written to stdout.

Only the chunks covering the range are decompressed, and each is verified against its digest
before any of it is written, so what reaches stdout is always vouched for by the TOC.
"""

from __future__ import annotations

import argparse
import sys

from lazylayer.daemon.cli._blob import open_blob

HELP = "print one file of an eStargz blob (verified, random access)"


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("blob", metavar="BLOB", help="eStargz / stargz / zstd:chunked blob file")
    parser.add_argument("path", metavar="PATH", help="file inside the layer (hardlinks are followed)")
    parser.add_argument("--offset", type=_non_negative, default=0, help="first byte (default 0)")
    parser.add_argument("--size", type=_non_negative, default=None, help="bytes to print (default: to EOF)")


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_blob(args.blob) as reader:
        size = -1 if args.size is None else args.size
        for piece in reader.iter_read(args.path, args.offset, size):
            out.write(piece)
    out.flush()
    return 0
