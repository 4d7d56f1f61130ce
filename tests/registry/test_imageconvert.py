"""Image-level convert and inspect against the real registry and OCI layout directories."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
import zlib
from contextlib import contextmanager

import pytest
import zstandard

from lazylayer.shared.errors import ConfigError, DigestMismatchError, NotFoundError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazylayer.shared.estargz.writer import WriterOptions
from lazylayer.workers.imageconvert import convert_image, inspect_image
from lazylayer.workers.registry.blobsource import RegistryBlobSource
from lazylayer.workers.registry.layout import OCILayout
from lazylayer.workers.registry.manifests import (
    DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, fetch_config,
    resolve_manifest,
)
from lazylayer.workers.registry.reference import parse_reference
from tests.registry.helpers import make_client
from tests.support.faultproxy import FaultProxy
from tests.support.registry import Layer, digest_of, push_blob, push_image, push_index, push_manifest

OPTIONS = WriterOptions(chunk_size=64 << 10, workers=1)
FILES = {
    "etc/hello.txt": b"hello world\n",
    "data/big.bin": hashlib.sha256(b"seed").digest() * 10000,  # 320000 bytes: 5 chunks
    "data/empty": b"",
}


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def read_back(client, ref, layer) -> BlobReader:
    source = RegistryBlobSource(client, ref, layer.digest, layer.size)
    return BlobReader.open(source, toc_digest=layer.annotations[TOC_DIGEST_ANNOTATION])


def check_estargz_layer(client, ref, layer, diff_id, files):
    """Annotation, TOC, file contents, and the config DiffID == sha256 of the decompressed blob."""
    reader = read_back(client, ref, layer)
    for name, data in files.items():
        assert reader.read(name) == data
    blob = io.BytesIO()
    client.download_blob(ref, layer.digest, blob)
    plain = zlib.decompressobj(wbits=31)
    tar_bytes, rest = b"", blob.getvalue()
    while rest:  # concatenated gzip members
        plain = zlib.decompressobj(wbits=31)
        tar_bytes += plain.decompress(rest)
        rest = plain.unused_data
    assert diff_id == digest_of(tar_bytes)
    assert layer.annotations[UNCOMPRESSED_SIZE_ANNOTATION] == str(len(tar_bytes))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert {m.name for m in tar.getmembers() if m.isfile()} >= set(files)


@contextmanager
def client_ctx():
    c = make_client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def client():
    with client_ctx() as c:
        yield c


@pytest.fixture(scope="module")
def gzip_image(registry):
    tar = layer_tar(FILES)
    push_image(registry, "app", "gzip", [Layer(gz(tar), OCI_LAYER_GZIP, {"keep.me": "yes"}, digest_of(tar))])
    return parse_reference(f"{registry.host}/app:gzip")


def test_convert_gzip_image_to_estargz(client, registry, gzip_image):
    seen = []

    @contextmanager
    def progress(description, total):
        seen.append(description)
        yield type("P", (), {"advance": lambda self, n: None})()

    dest = parse_reference(f"{registry.host}/app:esgz")
    result = convert_image(str(gzip_image), str(dest), options=OPTIONS, progress_factory=progress, client=client)
    manifest, _ = resolve_manifest(client, dest)
    assert result.digest == manifest.digest and result.manifests[0].layers[0].action == "converted"
    [layer] = manifest.layers
    assert layer.media_type == OCI_LAYER_GZIP and layer.annotations["keep.me"] == "yes"
    assert layer.annotations[TOC_DIGEST_ANNOTATION] == result.manifests[0].layers[0].toc_digest
    _, config = fetch_config(client, dest, manifest)
    check_estargz_layer(client, dest, layer, config["rootfs"]["diff_ids"][0], FILES)
    assert [d.split()[0] for d in seen] == ["pull", "convert", "push"]

    # Converting the result again keeps the layer as it is (already eStargz).
    again = convert_image(str(dest), f"{registry.host}/app:esgz2", options=OPTIONS, client=client)
    assert [l.action for l in again.manifests[0].layers] == ["kept"]
    assert resolve_manifest(client, parse_reference(f"{registry.host}/app:esgz2"))[0].layers == manifest.layers


def test_inspect_reads_only_tails_and_tocs(client, registry, gzip_image):
    convert_image(str(gzip_image), f"{registry.host}/app:esgz-inspect", options=OPTIONS, client=client)
    proxy = FaultProxy(registry.host)
    try:
        source = inspect_image(f"{proxy.host}/app:gzip", client=client)
        report = inspect_image(f"{proxy.host}/app:esgz-inspect", client=client)
    finally:
        proxy.stop()
    [gz_layer] = source["manifests"][0]["layers"]
    assert gz_layer["footer"] is None and gz_layer["toc_digest"] is None
    [layer] = report["manifests"][0]["layers"]
    assert layer["footer"] == "estargz" and layer["toc_digest_matches"] is True
    assert layer["toc_digest"] == layer["toc_digest_annotation"] and layer["entries"] >= len(FILES)
    blob_gets = [s for s in proxy.seen if "/blobs/" in s.path and s.method == "GET" and "sha256:" in s.path
                 and not s.path.endswith(report["manifests"][0]["config"]["digest"])]
    assert blob_gets and all(s.range for s in blob_gets)  # never a whole-layer GET
    assert "alice" not in json.dumps(report)


def test_mixed_layers_docker_manifest_and_kept_fixture(client, registry, fixtures_dir):
    plain = layer_tar({"a.txt": b"plain tar layer\n"})
    zstd = layer_tar({"b.txt": b"zstd layer\n" * 1000})
    facts = json.loads((fixtures_dir / "features-esgz.json").read_text())
    esgz = (fixtures_dir / facts["blob"]).read_bytes()
    repo = "mixed/app"
    layers = [(plain, OCI_LAYER, {}), (zstandard.ZstdCompressor().compress(zstd), OCI_LAYER_ZSTD, {}),
              (esgz, DOCKER_LAYER_GZIP, facts["annotations"])]
    descriptors = [{"mediaType": mt,
                    "digest": push_blob(registry, repo, data), "size": len(data),
                    **({"annotations": ann} if ann else {})} for data, mt, ann in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        digest_of(plain), digest_of(zstd), facts["diff_id"]]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "digest": push_blob(registry, repo, config), "size": len(config)}, "layers": descriptors}).encode()
    push_manifest(registry, repo, "v1", manifest, DOCKER_MANIFEST)

    result = convert_image(f"{registry.host}/{repo}:v1", f"{registry.host}/{repo}:esgz", options=OPTIONS, client=client)
    assert [l.action for l in result.manifests[0].layers] == ["converted", "converted", "kept"]
    dest = parse_reference(f"{registry.host}/{repo}:esgz")
    out, _ = resolve_manifest(client, dest)
    assert out.media_type == DOCKER_MANIFEST
    assert [l.media_type for l in out.layers] == [DOCKER_LAYER_GZIP, DOCKER_LAYER_GZIP, DOCKER_LAYER_GZIP]
    assert out.layers[2].digest == facts["blob_digest"]
    _, config = fetch_config(client, dest, out)
    check_estargz_layer(client, dest, out.layers[0], config["rootfs"]["diff_ids"][0], {"a.txt": b"plain tar layer\n"})
    check_estargz_layer(client, dest, out.layers[1], config["rootfs"]["diff_ids"][1], {"b.txt": b"zstd layer\n" * 1000})
    assert config["rootfs"]["diff_ids"][2] == facts["diff_id"]


def test_wrong_toc_annotation_on_an_estargz_layer_is_refused(client, registry, fixtures_dir):
    facts = json.loads((fixtures_dir / "features-esgz.json").read_text())
    blob = (fixtures_dir / facts["blob"]).read_bytes()
    bad = {**facts["annotations"], TOC_DIGEST_ANNOTATION: "sha256:" + "0" * 64}
    push_image(registry, "badtoc/app", "v1", [Layer(blob, OCI_LAYER_GZIP, bad, facts["diff_id"])])
    report = inspect_image(f"{registry.host}/badtoc/app:v1", client=client)
    assert report["manifests"][0]["layers"][0]["toc_digest_matches"] is False
    with pytest.raises(DigestMismatchError):
        convert_image(f"{registry.host}/badtoc/app:v1", f"{registry.host}/badtoc/app:out", options=OPTIONS, client=client)
    with pytest.raises(NotFoundError):
        resolve_manifest(client, parse_reference(f"{registry.host}/badtoc/app:out"))


def test_multi_platform_index_and_oci_layouts(client, registry, tmp_path):
    shared = layer_tar({"shared.txt": b"in both platforms\n"})
    own = {arch: layer_tar({f"{arch}.txt": arch.encode()}) for arch in ("amd64", "arm64")}
    pushed = {arch: push_image(registry, "multi/conv", arch, [Layer(gz(shared), diff_id=digest_of(shared)),
                                                              Layer(gz(own[arch]), diff_id=digest_of(own[arch]))],
                               architecture=arch) for arch in own}
    push_index(registry, "multi/conv", "all", [(d, b, {"os": "linux", "architecture": a}) for a, (d, b) in pushed.items()])

    layout = tmp_path / "layout"
    result = convert_image(f"{registry.host}/multi/conv:all", f"oci:{layout}:v1", all_platforms=True,
                           options=OPTIONS, client=client)
    assert [m.platform for m in result.manifests] == ["linux/amd64", "linux/arm64"]
    shared_out = {m.layers[0].digest for m in result.manifests}
    assert len(shared_out) == 1  # converted once, used by both
    oci = OCILayout(layout, "v1")
    index = json.loads(oci.resolve()[0])
    assert [e["platform"]["architecture"] for e in index["manifests"]] == ["amd64", "arm64"]

    # Layout -> registry, one platform only.
    back = convert_image(f"oci:{layout}:v1", f"{registry.host}/multi/conv:arm-esgz", platform="linux/arm64",
                         options=OPTIONS, client=client)
    assert [l.action for l in back.manifests[0].layers] == ["kept", "kept"]
    dest = parse_reference(f"{registry.host}/multi/conv:arm-esgz")
    manifest, index_doc = resolve_manifest(client, dest)
    assert index_doc is None
    _, config = fetch_config(client, dest, manifest)
    assert config["architecture"] == "arm64"
    check_estargz_layer(client, dest, manifest.layers[1], config["rootfs"]["diff_ids"][1], {"arm64.txt": b"arm64"})
    layout_report = inspect_image(f"oci:{layout}:v1", all_platforms=True)
    assert [l["footer"] for m in layout_report["manifests"] for l in m["layers"]] == ["estargz"] * 4

    with pytest.raises(NotFoundError, match="s390x"):
        convert_image(f"{registry.host}/multi/conv:all", f"{registry.host}/multi/conv:x", platform="linux/s390x",
                      options=OPTIONS, client=client)
    with pytest.raises(ConfigError, match="digest"):
        convert_image(f"{registry.host}/multi/conv:amd64", f"{registry.host}/multi/conv@sha256:" + "1" * 64,
                      options=OPTIONS, client=client)


def test_a_prefetch_list_spans_the_layers_of_an_image(client, registry):
    """Each layer takes the listed files it holds (upstream's ctr-remote does the same); a layer
    with none gets no prefetch range. Converting a whole image used to refuse any list whose
    paths were not all in every layer."""
    lower, upper = {"etc/conf": b"c" * 5000, "usr/lib/a.so": b"a" * 9000}, {"app/main.py": b"print(1)\n" * 500}
    layers = [Layer(gz(layer_tar(files)), OCI_LAYER_GZIP, {}, digest_of(layer_tar(files))) for files in (lower, upper)]
    push_image(registry, "app", "two-layers", layers)
    extra = {"etc/only-in-lower": b"x"}
    push_image(registry, "app", "with-unlisted", [Layer(gz(layer_tar(extra)), OCI_LAYER_GZIP, {},
                                                      digest_of(layer_tar(extra)))])
    options = dataclasses.replace(OPTIONS, prefetch=("usr/lib/a.so", "app/main.py"))
    dest = parse_reference(f"{registry.host}/app:two-layers-esgz")
    convert_image(f"{registry.host}/app:two-layers", str(dest), options=options, client=client)
    manifest, _ = resolve_manifest(client, dest)
    readers = [read_back(client, dest, layer) for layer in manifest.layers]
    assert [r.prefetch_size() > 0 for r in readers] == [True, True]
    convert_image(f"{registry.host}/app:with-unlisted", f"{registry.host}/app:with-unlisted-esgz",
                  options=options, client=client)
    [layer] = resolve_manifest(client, parse_reference(f"{registry.host}/app:with-unlisted-esgz"))[0].layers
    assert read_back(client, parse_reference(f"{registry.host}/app:with-unlisted-esgz"), layer).prefetch_size() == 0
