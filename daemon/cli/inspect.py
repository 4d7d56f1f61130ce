"""`lazylayer inspect BLOB|IMAGE [--json]`: what a blob's footer and TOC say.

IMAGE (a registry reference or ``oci:PATH[:TAG]``; ``--platform``, ``--all-platforms``) prints
per layer its media type, size, where it was read (source: registry, oci-layout, or urls for a
non-distributable layer the store has no copy of), the decompressor that claims it, footer kind, TOC digest and whether it matches the descriptor's
annotation, entry count and prefetch size -- reading only each layer's tail and TOC. Its
``--json`` is ``inspect_image()``'s document (workers/imageconvert.py).

Prints the footer kind, where the TOC is and its digest, the prefetch landmark and range, entry
counts, and a table of every path of the layer as the reader resolves it (duplicates resolved,
implicit parent directories shown, hardlinks with their final target).

``--json`` prints one object with sorted keys (stable; new keys may be added, none removed):

* ``source``: what was inspected (the BLOB argument); ``blob_size``: its size in bytes.
* ``footer``: ``{"kind": "estargz" | "stargz" | "zstd:chunked", "size": int}``.
* ``toc``: ``{"offset": int, "compressed_size": int, "json_size": int, "digest": "sha256:...",
  "version": int, "entries": int, "chunk_entries": int, "paths": int}`` -- offset is where the
  TOC's gzip member (zstd: its compressed frame) starts; entries counts every JSON entry,
  chunk entries included; paths counts the resolved paths listed below.
* ``prefetch``: ``{"landmark": "prefetch" | "no-prefetch" | null, "compressed_bytes": int | null}``
  -- the range ``[0, compressed_bytes)`` of the blob to prefetch; 0 means none; null when the
  layer has no landmark at all (legacy layers).
* ``paths``: one object per path in TOC order, the root (``""``) first: ``path``, ``type``
  (``dir``, ``reg``, ``symlink``, ``hardlink``, ``char``, ``block``, ``fifo``), ``implicit``
  (a directory with no entry of its own), ``mode`` (permission bits incl. setuid/setgid/sticky),
  ``uid``, ``gid``, ``uname``, ``gname``, ``mtime`` (Unix seconds), ``size`` (regular files and
  hardlinks: content length; symlinks: target length; else 0), ``link_target`` (symlink target or
  hardlink name as stored, else ""), ``hardlink_to`` (a hardlink's final target, else null),
  ``dev_major``, ``dev_minor``, ``xattrs`` (name -> base64 value), ``digest`` (content digest or
  ""), ``chunks`` (number of chunks), ``offset`` (blob offset of the first chunk, or null).
"""

from __future__ import annotations

import argparse
import base64
import os
import stat
from typing import Any

from lazylayer.daemon.cli import output
from lazylayer.daemon.cli._blob import open_blob
from lazylayer.daemon.cli._image import is_image_spec, registry_options
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import EntryType, TOCEntry

HELP = "show a blob's footer, TOC digest, prefetch landmark and entries"

_TYPE_BITS = {
    EntryType.DIR: stat.S_IFDIR, EntryType.REG: stat.S_IFREG, EntryType.HARDLINK: stat.S_IFREG,
    EntryType.SYMLINK: stat.S_IFLNK, EntryType.CHAR: stat.S_IFCHR, EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="BLOB|IMAGE",
                        help="eStargz / stargz / zstd:chunked blob file, image ref or oci:PATH[:TAG]")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="IMAGE: platform (default: this machine's)")
    parser.add_argument("--all-platforms", action="store_true", help="IMAGE: every platform of an index")
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"),
                        help="config file (TOML) for the [registry] settings")
    parser.add_argument("--json", action="store_true", help="machine-readable output (see module doc)")


def run(args: argparse.Namespace) -> int:
    if is_image_spec(args.source):
        return _run_image(args)
    with open_blob(args.source) as reader:
        report = describe(args.source, reader)
    if args.json:
        output.print_json(report)
    else:
        _print_human(report)
    return 0


def _run_image(args: argparse.Namespace) -> int:
    from lazylayer.workers.imageconvert import inspect_image

    report = inspect_image(args.source, platform=args.platform, all_platforms=args.all_platforms,
                           registry_options=registry_options(args.config))
    if args.json:
        output.print_json(report)
        return 0
    print(f"{report['reference']}@{report['digest']} ({report['media_type']})")
    for manifest in report["manifests"]:
        rows = [[layer["digest"][:19], layer["media_type"].rsplit(".", 2)[-1], layer["size"], layer["source"] or "-",
                 layer["decompressor"] or "-", layer["footer"] or "-",
                 layer["entries"] if layer["entries"] is not None else "-", _toc_state(layer),
                 layer["prefetch_size"] if layer["prefetch_size"] is not None else "-", layer["error"] or ""]
                for layer in manifest["layers"]]
        title = f"{manifest['platform'] or 'manifest'} {manifest['digest'][:19]}"
        output.print_table(title, ["layer", "type", "size", "source", "format", "footer", "entries", "TOC digest",
                                   "prefetch", "error"],
                           rows)
    return 0


def _toc_state(layer: dict[str, Any]) -> str:
    if layer["toc_digest"] is None:
        return "-"
    if layer["toc_digest_matches"] is None:
        return f"{layer['toc_digest'][:19]} (no annotation)"
    return f"{layer['toc_digest'][:19]} ({'matches' if layer['toc_digest_matches'] else 'MISMATCH'})"


def describe(source: str, reader: BlobReader) -> dict[str, Any]:
    """The ``--json`` document for one opened blob."""
    toc, footer = reader.toc, reader.footer
    prefetch = reader.prefetch_size()
    landmark = None
    if toc.has_no_prefetch_landmark:
        landmark = "no-prefetch"
    elif toc.prefetch_landmark_offset is not None:
        landmark = "prefetch"
    paths = [_describe_entry(reader, entry) for entry in toc.nodes()]
    return {
        "source": source,
        "blob_size": reader.source.size,
        "footer": {"kind": footer.kind.value, "size": footer.size},
        "toc": {
            "offset": footer.toc_offset,
            "compressed_size": footer.toc_size,
            "json_size": toc.json_size,
            "digest": reader.toc_digest,
            "version": toc.version,
            "entries": len(toc.entries),
            "chunk_entries": sum(1 for e in toc.entries if e.type is EntryType.CHUNK),
            "paths": len(paths),
        },
        "prefetch": {"landmark": landmark, "compressed_bytes": prefetch},
        "paths": paths,
    }


def _describe_entry(reader: BlobReader, entry: TOCEntry) -> dict[str, Any]:
    toc = reader.toc
    target = toc.hardlink_target(entry.name)
    chunks = toc.chunks(entry.name)
    size = 0
    digest = ""
    if entry.type is EntryType.SYMLINK:
        size = len(entry.link_name.encode())
    elif entry.type in (EntryType.REG, EntryType.HARDLINK):
        content = toc.entry(target) if target is not None else entry
        assert content is not None  # build_toc resolved every hardlink
        size, digest = content.size, content.digest
    return {
        "path": entry.name,
        "type": entry.type.value,
        "implicit": toc.is_implicit(entry.name),
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "uname": entry.uname,
        "gname": entry.gname,
        "mtime": entry.mtime,
        "size": size,
        "link_target": entry.link_name,
        "hardlink_to": target,
        "dev_major": entry.dev_major,
        "dev_minor": entry.dev_minor,
        "xattrs": {k: base64.b64encode(v).decode() for k, v in sorted(entry.xattrs.items())},
        "digest": digest,
        "chunks": len(chunks),
        "offset": chunks[0].blob_offset if chunks else None,
    }


def _print_human(report: dict[str, Any]) -> None:
    toc, prefetch = report["toc"], report["prefetch"]
    if prefetch["landmark"] == "prefetch":
        range_text = f"[0, {prefetch['compressed_bytes']}) compressed bytes (.prefetch.landmark)"
    elif prefetch["landmark"] == "no-prefetch":
        range_text = "none (.no.prefetch.landmark)"
    else:
        range_text = "no landmark (legacy layer)"
    lines = [
        ("blob", f"{report['source']} ({report['blob_size']} bytes)"),
        ("footer", f"{report['footer']['kind']} ({report['footer']['size']} bytes)"),
        ("TOC", f"offset {toc['offset']}, {toc['compressed_size']} compressed / "
                f"{toc['json_size']} JSON bytes, version {toc['version']}"),
        ("TOC digest", toc["digest"]),
        ("prefetch", range_text),
        ("entries", f"{toc['entries']} TOC entries ({toc['chunk_entries']} chunk entries), "
                    f"{toc['paths']} paths"),
    ]
    for label, text in lines:
        print(f"{label:<11} {text}")
    rows = []
    for item in report["paths"]:
        kind = EntryType(item["type"])
        name = item["path"] or "/"
        if item["hardlink_to"] is not None:
            name += f" => {item['hardlink_to']}"
        elif item["link_target"]:
            name += f" -> {item['link_target']}"
        if item["implicit"]:
            name += "  (implicit)"
        mode = stat.filemode(_TYPE_BITS[kind] | item["mode"])
        size = f"{item['dev_major']},{item['dev_minor']}" if kind in (EntryType.CHAR, EntryType.BLOCK) else item["size"]
        rows.append([kind.value, mode, f"{item['uid']}:{item['gid']}", size, item["chunks"], name])
    output.print_table(None, ["type", "mode", "uid:gid", "size", "chunks", "name"], rows)
