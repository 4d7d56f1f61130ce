"""`lazylayer verify BLOB [--toc-digest D] [--json]`: check a blob end to end.

Checks the TOC against ``--toc-digest`` (when given), then decompresses every chunk of every
regular file and checks it against its digest (and each file against its whole-file digest where
that adds anything). Exit 0 when everything matches; exit 1 naming the first mismatch.

``--json`` prints one object:

* success: ``{"ok": true, "blob": str, "toc_digest": "sha256:...", "toc_digest_checked": bool,
  "files": int, "chunks": int, "bytes": int}`` (bytes = uncompressed bytes verified)
* failure: ``{"ok": false, "blob": str, "error": {"kind": str, "message": str}}``; the same
  message also goes to stderr as one line.
"""

from __future__ import annotations

import argparse
import sys

from lazylayer.daemon.cli import output
from lazylayer.daemon.cli._blob import open_blob
from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.estargz.toc import EntryType

HELP = "check a blob's TOC digest and every chunk digest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("blob", metavar="BLOB", help="eStargz / stargz / zstd:chunked blob file")
    parser.add_argument("--toc-digest", metavar="D", help="expected sha256 of the TOC JSON (the "
                        "containerd.io/snapshot/stargz/toc.digest annotation)")
    parser.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace) -> int:
    try:
        with open_blob(args.blob, toc_digest=args.toc_digest) as reader:
            total = sum(
                chunk.size
                for entry in reader.toc.nodes() if entry.type is EntryType.REG
                for chunk in reader.toc.chunks(entry.name)
            )
            with output.progress("verifying", total) as bar:
                summary = reader.verify_all(bar.advance)
            toc_digest = reader.toc_digest
    except LazyLayerError as exc:
        if not args.json:
            raise
        output.print_json({"ok": False, "blob": args.blob, "error": exc.to_dict()})
        print(f"lazylayer verify: {exc}", file=sys.stderr)
        return 1
    if args.json:
        output.print_json({
            "ok": True, "blob": args.blob, "toc_digest": toc_digest,
            "toc_digest_checked": args.toc_digest is not None,
            "files": summary.files, "chunks": summary.chunks, "bytes": summary.bytes,
        })
    else:
        checked = "matches --toc-digest" if args.toc_digest else "not checked against a digest"
        print(f"OK {args.blob}: TOC {toc_digest} ({checked}); {summary.files} files, "
              f"{summary.chunks} chunks, {summary.bytes} bytes verified")
    return 0
