"""`lazylayer convert`: directories, tar files (plain/gzip/zstd), stdin, prefetch lists, --json,
and clean failures that leave no partial output behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from lazylayer.daemon.cli.main import main
from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.estargz.reader import BlobReader

JSON_KEYS = {"toc_digest", "diff_id", "blob_digest", "uncompressed_size", "blob_size", "entries",
             "chunk_entries", "toc_offset", "prefetch_size", "chunk_size", "compression_level",
             "annotations", "renamed", "source", "source_kind", "output"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("conf\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(os.urandom(200_000))
    (root / "readme").write_text("hello\n")
    return root


def tar_of(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buf.getvalue()


def run_json(capsys, *argv: str) -> dict:
    assert main(["convert", *argv, "--json", "--workers", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def names_in_order(blob: Path) -> list[str]:
    with FileSource(blob) as source:
        reader = BlobReader.open(source)
        return [e.name for e in reader.toc.entries if e.type.value != "chunk"]


def test_directory_with_json(tree, tmp_path, capsys):
    out = tmp_path / "out.blob"
    report = run_json(capsys, str(tree), str(out), "--chunk-size", "64K")
    assert set(report) == JSON_KEYS
    assert report["source_kind"] == "directory" and report["chunk_size"] == 65536
    data = out.read_bytes()
    assert report["blob_digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert report["blob_size"] == len(data) and report["chunk_entries"] == 3  # 200 kB / 64 KiB
    with FileSource(out) as source:
        reader = BlobReader.open(source, toc_digest=report["toc_digest"])
        assert reader.read_file("bin/tool") == (tree / "bin" / "tool").read_bytes()
    assert report["annotations"]["containerd.io/snapshot/stargz/toc.digest"] == report["toc_digest"]


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_tar_files_of_every_compression(tree, tmp_path, capsys, compression):
    raw = tar_of(tree)
    if compression == "gzip":
        raw = gzip.compress(raw)
    elif compression == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    src = tmp_path / "layer.tar"
    src.write_bytes(raw)
    report = run_json(capsys, str(src), str(tmp_path / "out.blob"))
    assert report["source_kind"] == "tar"
    assert names_in_order(tmp_path / "out.blob")[0] == ".no.prefetch.landmark"


def test_stdin_and_human_summary(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(tar_of(tree))))
    assert main(["convert", "-", str(tmp_path / "out.blob"), "--workers", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'out.blob'}: ")
    assert [line.split()[0] for line in lines[1:]] == ["blob", "TOC", "DiffID", "prefetch"]
    assert "readme" in names_in_order(tmp_path / "out.blob")


def test_prefetch_flags_and_list(tree, tmp_path, capsys):
    listing = tmp_path / "record.txt"
    listing.write_text('# from a recording\n\n{"path": "etc/conf"}\nreadme\n')
    out = tmp_path / "out.blob"
    report = run_json(capsys, str(tree), str(out), "--prefetch", "bin/tool", "--prefetch-list", str(listing))
    names = names_in_order(out)
    assert names[:names.index(".prefetch.landmark")] == ["bin", "bin/tool", "etc", "etc/conf", "readme"]
    assert report["prefetch_size"] > 0


def test_failures_print_one_line_and_leave_nothing(tree, tmp_path, capsys):
    out = tmp_path / "out.blob"
    assert main(["convert", str(tree), str(out), "--prefetch", "nope"]) == 1
    assert main(["convert", str(tmp_path / "missing"), str(out)]) == 1
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 100)
    assert main(["convert", str(bad), str(out), "--compression-level", "3"]) == 1
    assert main(["convert", str(tree), str(out), "--compression-level", "12"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("lazylayer convert: ") for line in err)
    assert "prefetch path 'nope'" in err[0] and "no such file" in err[1]
    assert "not a readable tar stream" in err[2] and "compression level" in err[3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "tree"]
    with pytest.raises(SystemExit):
        main(["convert", str(tree), str(out), "--chunk-size", "lots"])


def test_console_script_output_is_a_tar(tree, tmp_path):
    out = tmp_path / "out.blob"
    script = Path(sys.executable).with_name("lazylayer")
    subprocess.run([str(script), "convert", str(tree), str(out)], check=True, capture_output=True)
    listing = subprocess.run(["tar", "-tzf", str(out)], check=True, capture_output=True, text=True)
    assert listing.stdout.split() == [".no.prefetch.landmark", "bin/", "bin/tool", "etc/", "etc/conf",
                                      "readme", "stargz.index.json"]
