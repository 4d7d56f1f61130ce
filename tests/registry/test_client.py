"""The client against a real docker-registry: manifests, configs, ranged and multi-range reads."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lazylayer.shared.errors import NotFoundError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.workers.registry.blobsource import RegistryBlobSource
from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION
from lazylayer.workers.registry.manifests import (
    Index, Platform, fetch_config, fetch_document, parse_platform, resolve_manifest,
)
from lazylayer.workers.registry.ranges import ByteRange
from lazylayer.workers.registry.reference import parse_reference
from tests.registry.helpers import make_client, push_fixture
from tests.support.registry import Layer, digest_of, push_image, push_index


@pytest.fixture(scope="module")
def pushed(registry, fixtures_dir):
    return push_fixture(registry, fixtures_dir)


@pytest.fixture(scope="module")
def client():
    c = make_client()
    yield c
    c.close()


def test_manifest_layers_annotations_and_config(client, pushed):
    manifest, index = resolve_manifest(client, pushed.ref)
    assert index is None and manifest.digest == pushed.manifest_digest
    [layer] = manifest.layers
    assert (layer.digest, layer.size) == (pushed.digest, pushed.facts["blob_size"])
    assert layer.annotations == pushed.facts["annotations"]
    raw, config = fetch_config(client, pushed.ref, manifest)
    assert digest_of(raw) == manifest.config.digest
    assert config["rootfs"]["diff_ids"] == [pushed.facts["diff_id"]]
    by_digest = fetch_document(client, pushed.ref.with_digest(manifest.digest))
    assert by_digest.raw == manifest.raw


def test_index_picks_the_platform(client, registry):
    repo = "multi/app"
    amd = push_image(registry, repo, "amd", [Layer(b"amd64 layer")], architecture="amd64")
    arm = push_image(registry, repo, "arm", [Layer(b"arm64 layer")], architecture="arm64")
    push_index(registry, repo, "all", [(amd[0], amd[1], {"os": "linux", "architecture": "amd64"}),
                                       (arm[0], arm[1], {"os": "linux", "architecture": "arm64", "variant": "v8"})])
    ref = parse_reference(f"{registry.host}/{repo}:all")
    manifest, index = resolve_manifest(client, ref, parse_platform("linux/arm64"))
    assert isinstance(index, Index) and manifest.digest == arm[0]
    assert resolve_manifest(client, ref, Platform("linux", "amd64"))[0].digest == amd[0]
    with pytest.raises(NotFoundError, match="linux/s390x.*linux/amd64, linux/arm64/v8"):
        resolve_manifest(client, ref, parse_platform("linux/s390x"))


def test_missing_things_are_not_found(client, pushed, registry):
    with pytest.raises(NotFoundError):
        resolve_manifest(client, pushed.ref.with_tag("no-such-tag"))
    with pytest.raises(NotFoundError):
        client.blob_size(pushed.ref, "sha256:" + "0" * 64)
    with pytest.raises(NotFoundError):
        resolve_manifest(client, parse_reference(f"{registry.host}/no/such/repo:x"))


def test_blob_size_and_download(client, pushed):
    assert client.blob_size(pushed.ref, pushed.digest) == len(pushed.blob)
    out = io.BytesIO()
    assert client.download_blob(pushed.ref, pushed.digest, out) == len(pushed.blob)
    assert out.getvalue() == pushed.blob
    assert client.blob_exists(pushed.ref, pushed.digest)
    assert not client.blob_exists(pushed.ref, "sha256:" + "1" * 64)


def test_reader_opens_remote_blob_and_reads_verified_files(client, pushed, expected_paths):
    source = RegistryBlobSource(client, pushed.ref, pushed.digest, pushed.facts["blob_size"])
    reader = BlobReader.open(source, toc_digest=pushed.facts["annotations"][TOC_DIGEST_ANNOTATION])
    for path in ("data/random-5MiB.bin", "README.txt", "names/数据/报告.txt"):
        data = reader.read(path)
        assert hashlib.sha256(data).hexdigest() == expected_paths[path]["sha256"]
    assert reader.read("data/random-5MiB.bin", 4 * 1024 * 1024 - 10, 20) == \
        reader.read("data/random-5MiB.bin")[4 * 1024 * 1024 - 10 : 4 * 1024 * 1024 + 10]


def test_multi_range_in_one_request(client, pushed):
    wanted = [ByteRange(5_000_000, 100), ByteRange(0, 10), ByteRange(10, 5), ByteRange(77, 0), ByteRange(2_000_000, 65536)]
    got = client.read_ranges(pushed.ref, pushed.digest, wanted)
    assert got == [pushed.blob[r.offset : r.end] for r in wanted]


ranges = st.lists(st.tuples(st.integers(0, 5311514), st.integers(0, 70000)), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges)
def test_property_ranged_reads_equal_the_downloaded_blob(client, pushed, raw_ranges):
    size = len(pushed.blob)
    wanted = [ByteRange(o, min(n, size - o)) for o, n in raw_ranges]
    got = client.read_ranges(pushed.ref, pushed.digest, wanted)
    assert got == [pushed.blob[r.offset : r.end] for r in wanted]
    source = RegistryBlobSource(client, pushed.ref, pushed.digest)
    first = wanted[0]
    assert source.read_at(first.offset, first.length) == pushed.blob[first.offset : first.end]
