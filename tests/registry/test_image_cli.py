"""`lazylayer convert` and `inspect` on whole images, through the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from lazylayer.daemon.cli._image import is_image_spec
from tests.registry.test_imageconvert import FILES, gz, layer_tar
from tests.support.registry import Layer, push_image

LAZYLAYER = [sys.executable, "-m", "lazylayer.daemon.cli.main"]


def lazylayer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAZYLAYER, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LAZYLAYER_CONFIG": ""})


def test_image_specs_are_told_from_paths(tmp_path):
    existing = tmp_path / "host.tld:5000"
    existing.mkdir()
    assert is_image_spec("oci:/some/dir") and is_image_spec("127.0.0.1:5000/app/x")
    assert is_image_spec("debian:12") and is_image_spec("localhost/app")
    assert is_image_spec("app@sha256:" + "a" * 64)
    assert not is_image_spec(str(existing)) and not is_image_spec("-")
    assert not is_image_spec("some/missing/path") and not is_image_spec("missing.tar")


def test_convert_and_inspect_an_image_in_a_registry_and_a_layout(registry, tmp_path):
    push_image(registry, "cli/src", "v1", [Layer(gz(layer_tar(FILES)))])
    src, dest = f"{registry.host}/cli/src:v1", f"{registry.host}/cli/dest:v1"

    done = lazylayer("convert", src, dest, "--chunk-size", "64K", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    [manifest] = result["manifests"]
    [layer] = manifest["layers"]
    assert layer["action"] == "converted" and layer["toc_digest"].startswith("sha256:")

    human = lazylayer("inspect", dest)
    assert human.returncode == 0, human.stderr
    assert "matches" in human.stdout and layer["digest"][:19] in human.stdout

    report = json.loads(lazylayer("inspect", dest, "--json").stdout)
    [facts] = report["manifests"][0]["layers"]
    assert facts["toc_digest"] == layer["toc_digest"] and facts["toc_digest_matches"] is True
    assert facts["footer"] == "estargz" and facts["entries"] >= len(FILES)

    layout = lazylayer("convert", src, f"oci:{tmp_path / 'layout'}:v1", "--chunk-size", "64K")
    assert layout.returncode == 0, layout.stderr
    assert f"oci:{tmp_path / 'layout'}" in layout.stdout and "converted" in layout.stdout
    again = json.loads(lazylayer("inspect", f"oci:{tmp_path / 'layout'}:v1", "--json").stdout)
    assert again["manifests"][0]["layers"][0]["toc_digest"] == layer["toc_digest"]


def test_image_errors_are_one_clear_line(registry, tmp_path):
    missing = lazylayer("inspect", f"{registry.host}/cli/nothing:v1")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "cli/nothing" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

    wrong = lazylayer("convert", str(tmp_path), str(tmp_path / "out.blob"), "--platform", "linux/arm64")
    assert wrong.returncode == 1 and "image SRC" in wrong.stderr
