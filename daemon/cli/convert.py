"""`lazylayer convert SRC OUT`: make an eStargz blob from a directory or a layer tar, or an
eStargz image from an image.

Layer form: SRC is a directory, a tar file (plain, gzip or zstd, detected by its first bytes), or
``-`` for a tar on stdin. OUT is the blob file to write; it appears only when the conversion
succeeded (the blob is written beside it under a temporary name and renamed).

Image form: SRC is an image reference (``registry/repo:tag``, ``...@sha256:...``) or an OCI image
layout (``oci:PATH[:TAG]``); OUT is a reference or layout too. Every layer tar becomes eStargz
(eStargz layers are kept, their TOC digest checked); ``--platform os/arch[/variant]`` picks one
manifest of a multi-platform image (default: this machine's), ``--all-platforms`` converts them
all into a new index. Registry settings come from the config file's ``[registry]`` section
(``--config``). ``--json`` prints ``ImageConvertResult.to_dict()`` (workers/imageconvert.py).

Names that are not UTF-8 are written into the TOC with U+FFFD (one per undecodable byte, as
upstream's Go JSON encoder does) and listed in a warning on stderr (``renamed`` in ``--json``);
``--strict-names`` refuses such input instead.

Options: ``--chunk-size N`` (bytes, suffixes K/M/G/T allowed, as in the config file; default 4M), ``--prefetch PATH``
(repeatable) and ``--prefetch-list FILE`` (one path per line, ``#`` comments; lines that are JSON
objects use their ``"path"``, as ctr-remote's record files do) put those files first, before
``.prefetch.landmark``; ``--compression-level`` 0-9 (default 6); ``--workers N`` compression
processes (default: one per CPU; the blob is the same whatever N).

``--json`` prints one object with sorted keys (stable; keys may be added, none removed):
``toc_digest``, ``diff_id``, ``blob_digest`` (``sha256:...``); ``uncompressed_size`` and
``blob_size`` (bytes); ``entries`` (TOC entries, chunk entries included) and ``chunk_entries``;
``toc_offset`` (where the TOC's gzip member starts); ``prefetch_size`` (compressed bytes before
``.prefetch.landmark``, 0 without a prefetch list); ``chunk_size``; ``compression_level``;
``annotations`` (the layer descriptor annotations: TOC digest and uncompressed size);
``renamed`` (entries whose names are not UTF-8, as backslash-escaped bytes); plus
``source`` (SRC as given), ``source_kind`` (``directory`` or ``tar``) and ``output`` (OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Callable

from lazylayer.daemon.cli import output
from lazylayer.daemon.cli._image import is_image_spec, registry_options
from lazylayer.shared.config import load_config, parse_size
from lazylayer.shared.errors import ConfigError, LazyLayerError, NotFoundError
from lazylayer.shared.estargz.writer import (
    ConvertResult, Progress, WriterOptions, convert_dir, convert_tar,
)

HELP = "convert a directory, layer tar or whole image (registry ref, oci:PATH) into eStargz"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC",
                        help="directory, tar file (plain/gzip/zstd), - for stdin, image ref or oci:PATH[:TAG]")
    parser.add_argument("output", metavar="OUT", help="blob file to write (image SRC: image ref or oci:PATH[:TAG])")
    parser.add_argument("--chunk-size", type=_size, default=None, metavar="N",
                        help="chunk size in bytes, K/M/G/T suffixes allowed (default: format.chunk_size, 4M)")
    parser.add_argument("--prefetch", action="append", default=[], metavar="PATH",
                        help="put this file first, to be prefetched (repeatable, kept in order)")
    parser.add_argument("--prefetch-list", metavar="FILE",
                        help="file listing paths to prefetch, one per line (after any --prefetch)")
    parser.add_argument("--compression-level", type=int, default=WriterOptions.compression_level,
                        metavar="N", help="gzip level 0-9 (default 6: 9 is far slower for ~1%% less)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="compression processes (default: one per CPU)")
    parser.add_argument("--strict-names", action="store_true",
                        help="refuse names that are not UTF-8 (default: the TOC holds them with U+FFFD, as "
                             "upstream's does, and a warning lists them)")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help="image SRC: the platform to convert (default: this machine's)")
    parser.add_argument("--all-platforms", action="store_true", help="image SRC: convert every platform")
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"),
                        help="config file (TOML) for the [registry] and [format] settings")
    parser.add_argument("--json", action="store_true", help="machine-readable output (see module doc)")


@dataclass(frozen=True)
class _SourceKind:
    """One kind of SRC: how to recognise it, guess its size for the progress bar, convert it."""

    name: str
    matches: Callable[[str], bool]
    size_hint: Callable[[str], int | None]
    convert: Callable[[str, BinaryIO, WriterOptions, Progress], ConvertResult]


def _tree_size(path: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _convert_directory(src: str, out: BinaryIO, options: WriterOptions, progress: Progress) -> ConvertResult:
    return convert_dir(src, out, options, progress)


def _convert_tar_file(src: str, out: BinaryIO, options: WriterOptions, progress: Progress) -> ConvertResult:
    if src == "-":
        return convert_tar(sys.stdin.buffer, out, options, progress)
    with open(src, "rb") as f:
        return convert_tar(f, out, options, progress)


#: Tried in order; the first that matches converts. Image references and OCI layouts go here.
_SOURCES = (
    _SourceKind("directory", os.path.isdir, _tree_size, _convert_directory),
    _SourceKind("tar", lambda s: s == "-" or os.path.exists(s),
                lambda s: None if s == "-" else os.path.getsize(s), _convert_tar_file),
)


def run(args: argparse.Namespace) -> int:
    flags = {} if args.chunk_size is None else {"format.chunk_size": args.chunk_size}  # range-checked there
    chunk_size = load_config(args.config or None, overrides=flags).config.format.chunk_size
    options = WriterOptions(
        chunk_size=chunk_size, compression_level=args.compression_level,
        prefetch=tuple(args.prefetch) + _prefetch_list(args.prefetch_list), workers=args.workers,
        strict_names=args.strict_names,
    )
    if is_image_spec(args.source):
        return _run_image(args, options)
    if args.platform or args.all_platforms:
        raise ConfigError("--platform and --all-platforms apply to an image SRC (a reference or oci:PATH)")
    kind = next((k for k in _SOURCES if k.matches(args.source)), None)
    if kind is None:
        raise NotFoundError(f"{args.source}: no such file or directory")
    if os.path.isdir(args.output):
        raise ConfigError(f"{args.output}: OUT must be a file path, not a directory")
    total = kind.size_hint(args.source) if sys.stderr.isatty() else None
    with output.progress(f"converting {args.source}", total) as bar:
        result = _write_atomically(args.output, lambda out: kind.convert(args.source, out, options, bar))
    _warn_renamed(result.renamed)
    if args.json:
        output.print_json({**result.to_dict(), "source": args.source, "source_kind": kind.name,
                           "output": args.output})
    else:
        _print_human(args.output, result)
    return 0


def _run_image(args: argparse.Namespace, options: WriterOptions) -> int:
    from lazylayer.workers.imageconvert import convert_image

    result = convert_image(args.source, args.output, platform=args.platform, all_platforms=args.all_platforms,
                           options=options, progress_factory=output.progress,
                           registry_options=registry_options(args.config))
    if args.json:
        output.print_json(result.to_dict())
        return 0
    rows = [[m.platform or "-", layer.source_digest[:19], layer.action, layer.digest[:19],
             output.human_size(layer.size), (layer.toc_digest or "")[:19]]
            for m in result.manifests for layer in m.layers]
    output.print_table(None, ["platform", "source layer", "action", "layer", "size", "TOC digest"], rows)
    print(f"wrote {result.destination}@{result.digest} ({result.media_type})")
    return 0


def _write_atomically(path: str, write: Callable[[BinaryIO], ConvertResult]) -> ConvertResult:
    """Run ``write`` on a temporary file beside ``path`` and rename it into place on success."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
    except OSError as exc:
        raise LazyLayerError(f"cannot write in {directory}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            result = write(out)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
        return result
    except OSError as exc:
        os.unlink(partial)
        raise LazyLayerError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        os.unlink(partial)
        raise


def _warn_renamed(renamed: tuple[str, ...], shown: int = 20) -> None:
    """Say which entries the TOC names differently from the input (names that are not UTF-8)."""
    if not renamed:
        return
    more = f", and {len(renamed) - shown} more" if len(renamed) > shown else ""
    print(f"lazylayer convert: warning: {len(renamed)} entries have names (or link targets, owners, xattr "
          f"names) that are not UTF-8; the tar keeps their bytes and the TOC holds them with U+FFFD, as "
          f"upstream does (--strict-names refuses them): {', '.join(renamed[:shown])}{more}", file=sys.stderr)


def _prefetch_list(path: str | None) -> tuple[str, ...]:
    if path is None:
        return ()
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--prefetch-list {path}: {exc}") from exc
    paths = []
    for number, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                line = json.loads(line)["path"]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"--prefetch-list {path}:{number}: JSON line without a \"path\"") from None
        paths.append(line)
    return tuple(paths)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_human(path: str, result: ConvertResult) -> None:
    ratio = result.blob_size / result.uncompressed_size if result.uncompressed_size else 0
    prefetch = output.human_size(result.prefetch_size) if result.prefetch_size else "none"
    print(f"wrote {path}: {output.human_size(result.blob_size)} eStargz blob ({ratio:.0%} of "
          f"{output.human_size(result.uncompressed_size)}), {result.entries} TOC entries "
          f"({result.chunk_entries} chunk entries)")
    print(f"  blob digest  {result.blob_digest}")
    print(f"  TOC digest   {result.toc_digest}")
    print(f"  DiffID       {result.diff_id}")
    print(f"  prefetch     {prefetch}")
