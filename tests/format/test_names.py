"""Names that are not UTF-8: upstream's TOC holds them with one U+FFFD per undecodable byte (Go's
encoding/json; checked against `json.Marshal` of the same bytes), the tar keeps the bytes. The
converter does the same, reports the entries it renamed, and refuses them with --strict-names."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lazylayer.daemon.cli.main import main
from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.errors import FormatError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.writer import WriterOptions, convert_dir, convert_tar

#: raw name -> the name upstream's TOC holds (Go: json.Marshal(string(raw)))
NAMES = {
    b"caf\xe9.txt": "caf\ufffd.txt",
    b"dir\xff/in\xe2\x82.txt": "dir\ufffd/in\ufffd\ufffd.txt",  # a cut 3-byte sequence: one U+FFFD per byte
    b"link\xfe": "link\ufffd",
}


def raw_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        def add(raw: bytes, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: bytes = b"") -> None:
            info = tarfile.TarInfo(raw.decode("utf-8", "surrogateescape"))
            info.type, info.size = kind, len(data)
            info.linkname = link.decode("utf-8", "surrogateescape")
            tar.addfile(info, io.BytesIO(data))
        add(b"ok.txt", data=b"ok")
        add(b"caf\xe9.txt", data=b"cafe")
        add(b"dir\xff", tarfile.DIRTYPE)
        add(b"dir\xff/in\xe2\x82.txt", data=b"inner")
        add(b"link\xfe", tarfile.SYMTYPE, link=b"caf\xe9.txt")
    return buf.getvalue()


def toc_names(blob: Path) -> dict[str, object]:
    with FileSource(blob) as source:
        return {e.name: e for e in BlobReader.open(source).toc.entries}


def test_tar_names_get_u_fffd_in_the_toc_and_keep_their_bytes_in_the_tar(tmp_path):
    out = tmp_path / "out.blob"
    with open(out, "wb") as f:
        result = convert_tar(io.BytesIO(raw_tar()), f)
    assert result.renamed == ("caf\\xe9.txt", "dir\\xff", "dir\\xff/in\\xe2\\x82.txt", "link\\xfe")
    entries = toc_names(out)
    for name in NAMES.values():
        assert name in entries
    assert entries["link\ufffd"].link_name == "caf\ufffd.txt"
    with FileSource(out) as source:
        assert BlobReader.open(source).read_file("dir\ufffd/in\ufffd\ufffd.txt") == b"inner"
    with tarfile.open(out, "r:gz", encoding="utf-8", errors="surrogateescape") as tar:
        raw = {m.name.encode("utf-8", "surrogateescape") for m in tar.getmembers()}
    assert {b"caf\xe9.txt", b"dir\xff", b"dir\xff/in\xe2\x82.txt", b"link\xfe"} <= raw


def test_directory_names_too(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"cafe")
    with open(tmp_path / "out.blob", "wb") as f:
        result = convert_dir(root, f)
    assert result.renamed == ("caf\\xe9.txt",) and "caf\ufffd.txt" in toc_names(tmp_path / "out.blob")


def test_strict_names_refuses(tmp_path):
    with pytest.raises(FormatError, match=r"input entry 'caf\\xe9.txt': name 'caf\\xe9.txt' is not UTF-8"):
        convert_tar(io.BytesIO(raw_tar()), io.BytesIO(), WriterOptions(strict_names=True))


def test_cli_warns_with_the_list_and_strict_names_refuses(tmp_path, capsys):
    src = tmp_path / "layer.tar"
    src.write_bytes(raw_tar())
    assert main(["convert", str(src), str(tmp_path / "out.blob")]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("lazylayer convert: warning: 4 entries") and "U+FFFD" in err and "--strict-names" in err
    assert err.endswith("caf\\xe9.txt, dir\\xff, dir\\xff/in\\xe2\\x82.txt, link\\xfe")
    assert main(["convert", "--strict-names", str(src), str(tmp_path / "strict.blob")]) == 1
    assert "is not UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "strict.blob").exists()
