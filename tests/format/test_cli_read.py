"""`lazylayer inspect`, `verify` and `cat`, run as the real console script on the upstream
fixtures, and on a corrupted copy."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lazylayer.daemon.cli.main import main
from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.estargz.reader import BlobReader
from tests.conftest import FIXTURE_TAGS, fixture_facts

LAZYLAYER = Path(sys.executable).parent / "lazylayer"
RANDOM_FILE = "data/random-5MiB.bin"


def lazylayer(*args: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(LAZYLAYER), *map(str, args)], capture_output=True, timeout=60)


def one_clear_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text
    assert text.count("\n") == 1, text
    return text


@pytest.fixture(scope="module")
def corrupt_blob(fixtures_dir, tmp_path_factory) -> Path:
    """features-esgz.blob with one payload byte of the random file's second chunk flipped."""
    path = tmp_path_factory.mktemp("corrupt") / "corrupt.blob"
    shutil.copy(fixtures_dir / "features-esgz.blob", path)
    with FileSource(path) as source:
        chunk = BlobReader.open(source).toc.chunks(RANDOM_FILE)[1]
    data = bytearray(path.read_bytes())
    data[chunk.blob_offset + 1000] ^= 0x01  # stored deflate block: inflates, hashes wrong
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("tag", FIXTURE_TAGS)
def test_inspect_json(fixtures_dir, expected_paths, tag):
    facts = fixture_facts(fixtures_dir, tag)
    done = lazylayer("inspect", "--json", fixtures_dir / facts["blob"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["blob_size"] == facts["blob_size"]
    assert report["footer"]["kind"] == facts["footer"]["kind"]
    toc = report["toc"]
    assert toc["digest"] == facts["toc_digest_annotation"]
    assert (toc["offset"], toc["compressed_size"], toc["json_size"], toc["entries"], toc["chunk_entries"]) == (
        facts["toc"]["offset"], facts["toc"]["compressed_size"], facts["toc"]["json_size"],
        facts["toc"]["entries"], facts["toc"]["chunk_entries"])
    assert report["prefetch"]["compressed_bytes"] == facts["prefetch"]["compressed_bytes"]
    assert report["prefetch"]["landmark"] == (
        "prefetch" if facts["landmarks"]["prefetch_landmark"] else "no-prefetch")
    paths = {p["path"]: p for p in report["paths"]}
    assert paths[""]["implicit"] and paths[""]["type"] == "dir"
    for path, want in expected_paths.items():
        got = paths[path]
        assert got["hardlink_to"] == want.get("hardlink_to")
        assert ("reg" if got["type"] == "hardlink" else got["type"]) == want["type"]
        for key in ("mode", "uid", "gid", "mtime", "xattrs"):
            assert got[key] == want[key], (path, key)
        if "size" in want:
            assert got["size"] == want["size"], path
        if "sha256" in want:
            assert got["digest"] == "sha256:" + want["sha256"]
        if want["type"] == "symlink":
            assert got["link_target"] == want["link_target"]
        if want["type"] in ("char", "block"):
            assert (got["dev_major"], got["dev_minor"]) == (want["devmajor"], want["devminor"])
        if path in facts["files"]:
            assert (got["offset"], got["chunks"]) == (facts["files"][path]["offset"], facts["files"][path]["chunks"])


@pytest.mark.parametrize("tag", FIXTURE_TAGS)
def test_verify(fixtures_dir, tag):
    facts = fixture_facts(fixtures_dir, tag)
    done = lazylayer("verify", fixtures_dir / facts["blob"], "--toc-digest", facts["toc_digest_annotation"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(f"OK {fixtures_dir / facts['blob']}: TOC {facts['toc_digest_annotation']}")


def test_cat_whole_file_and_range(fixtures_dir, expected_paths):
    blob = fixtures_dir / "features-zstdchunked.blob"
    done = lazylayer("cat", blob, RANDOM_FILE)
    assert done.returncode == 0 and not done.stderr
    assert hashlib.sha256(done.stdout).hexdigest() == expected_paths[RANDOM_FILE]["sha256"]
    part = lazylayer("cat", blob, RANDOM_FILE, "--offset", 4194000, "--size", 700)
    assert part.stdout == done.stdout[4194000:4194700]
    link = lazylayer("cat", blob, "links/beta.txt")
    assert hashlib.sha256(link.stdout).hexdigest() == expected_paths["links/beta.txt"]["sha256"]


def test_corrupt_chunk_verify_names_the_file(corrupt_blob):
    done = lazylayer("verify", corrupt_blob)
    assert done.returncode == 1 and not done.stdout
    line = one_clear_line(done.stderr)
    assert line.startswith(f"lazylayer verify: {RANDOM_FILE}: chunk at file offset 4194304: digest mismatch")


def test_corrupt_chunk_verify_json(corrupt_blob, capsys):
    assert main(["verify", "--json", str(corrupt_blob)]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False and report["error"]["kind"] == "digest"
    assert RANDOM_FILE in report["error"]["message"] and RANDOM_FILE in err


def test_corrupt_chunk_cat_fails_with_one_line(corrupt_blob):
    done = lazylayer("cat", corrupt_blob, RANDOM_FILE, "--offset", 4194304, "--size", 10)
    assert done.returncode == 1 and not done.stdout  # nothing unverified reaches stdout
    assert RANDOM_FILE in one_clear_line(done.stderr)
    intact = lazylayer("cat", corrupt_blob, RANDOM_FILE, "--size", 10)  # first chunk is fine
    assert intact.returncode == 0 and len(intact.stdout) == 10


def test_verify_wrong_toc_digest(fixtures_dir, capsys):
    wrong = "sha256:" + "0" * 64
    assert main(["verify", str(fixtures_dir / "features-esgz.blob"), "--toc-digest", wrong]) == 1
    assert f"TOC: digest mismatch: expected {wrong}" in capsys.readouterr().err


def test_verify_json_success(fixtures_dir, capsys):
    facts = fixture_facts(fixtures_dir, "esgz-c64k")
    assert main(["verify", "--json", str(fixtures_dir / facts["blob"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"ok": True, "blob": str(fixtures_dir / facts["blob"]),
                      "toc_digest": facts["toc_digest_annotation"], "toc_digest_checked": False,
                      "files": 22, "chunks": 102, "bytes": 5550824}


def test_inspect_human(fixtures_dir, capsys):
    assert main(["inspect", str(fixtures_dir / "features-esgz-prefetch.blob")]) == 0
    out = capsys.readouterr().out
    assert "footer      estargz (51 bytes)" in out
    assert "prefetch    [0, 61360) compressed bytes (.prefetch.landmark)" in out
    assert "links/beta.txt => links/alpha.txt" in out and "-rwsr-xr-x" in out
    assert "bin/tool-link -> tool" in out


@pytest.mark.parametrize("args,message", [
    (["cat", "{blob}", "no/such"], "no/such: no such file in the layer"),
    (["cat", "{blob}", "data"], "data: not a regular file"),
    (["inspect", "/no/such.blob"], "/no/such.blob: no such file"),
    (["inspect", "{readme}"], "not an eStargz/stargz/zstd:chunked blob"),
])
def test_bad_arguments_give_one_line(fixtures_dir, capsys, args, message):
    blob, readme = fixtures_dir / "features-esgz.blob", fixtures_dir / "README.md"
    argv = [a.format(blob=blob, readme=readme) for a in args]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_xattrs_in_inspect_are_base64(fixtures_dir, capsys):
    assert main(["inspect", "--json", str(fixtures_dir / "features-esgz.blob")]) == 0
    paths = {p["path"]: p for p in json.loads(capsys.readouterr().out)["paths"]}
    assert base64.b64decode(paths["attrs/tagged.txt"]["xattrs"]["user.origin"]) == b"features-fixture"
