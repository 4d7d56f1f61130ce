"""Pushing with lazylayer's own client (monolithic, chunked, skip-existing, mount) to real registries."""

from __future__ import annotations

import io
import json
import os

import pytest

from lazylayer.shared.errors import AuthError, RegistryError
from lazylayer.workers.registry.auth import Credentials
from lazylayer.workers.registry.manifests import OCI_MANIFEST, resolve_manifest
from lazylayer.workers.registry.push import mount_blob, push_blob, push_manifest
from lazylayer.workers.registry.ranges import ByteRange
from lazylayer.workers.registry.reference import parse_reference
from tests.registry.helpers import make_client
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.registry import USERS, digest_of

DATA = os.urandom(300_000)


def manifest_for(config_digest, config_size, layer_digest):
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": config_digest, "size": config_size},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": layer_digest, "size": len(DATA),
                                   "annotations": {"a": "b"}}]}).encode()


@pytest.mark.parametrize("chunk_size", [None, 100_000])
def test_push_blob_and_manifest_then_read_back(registry, chunk_size):
    client = make_client()
    ref = parse_reference(f"{registry.host}/pushed/{chunk_size or 'mono'}:v1")
    digest = digest_of(DATA)
    data = io.BytesIO(b"skip" + DATA)
    data.seek(4)
    assert push_blob(client, ref, digest, len(DATA), data, chunk_size=chunk_size) is True
    assert push_blob(client, ref, digest, len(DATA), io.BytesIO(DATA), chunk_size=chunk_size) is False
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    push_blob(client, ref, digest_of(config), len(config), io.BytesIO(config))
    body = manifest_for(digest_of(config), len(config), digest)
    assert push_manifest(client, ref, body, OCI_MANIFEST, ref.tag) == digest_of(body)
    manifest, _ = resolve_manifest(client, ref)
    assert manifest.raw == body and manifest.layers[0].annotations == {"a": "b"}
    assert client.read_ranges(ref, digest, [ByteRange(1000, 5000)]) == [DATA[1000:6000]]


def test_registry_refuses_wrong_digest(registry):
    client = make_client()
    ref = parse_reference(f"{registry.host}/pushed/bad:x")
    with pytest.raises(RegistryError) as caught:
        push_blob(client, ref, digest_of(b"other"), len(DATA), io.BytesIO(DATA))
    assert caught.value.status == 400


def test_retried_monolithic_put_resends_the_bytes(registry):
    proxy = FaultProxy(registry.host)
    try:
        proxy.add(Rule("status", times=1, status=503, method="PUT", path="/blobs/uploads/"))
        client = make_client()
        ref = parse_reference(f"{proxy.host}/pushed/retry:x")
        assert push_blob(client, ref, digest_of(DATA), len(DATA), io.BytesIO(DATA)) is True
        assert client.read_ranges(ref, digest_of(DATA), [ByteRange(0, len(DATA))]) == [DATA]
    finally:
        proxy.stop()


def test_mount_between_repositories(registry):
    client = make_client()
    source = parse_reference(f"{registry.host}/mount/src:x")
    push_blob(client, source, digest_of(DATA), len(DATA), io.BytesIO(DATA))
    target = parse_reference(f"{registry.host}/mount/dst:x")
    assert mount_blob(client, target, digest_of(DATA), source.repository) is True
    assert client.blob_exists(target, digest_of(DATA))
    assert mount_blob(client, target, digest_of(b"absent"), source.repository) is False


def test_push_needs_push_rights(token_registry):
    ref = parse_reference(f"{token_registry.host}/pushed/tok:x")
    with pytest.raises(AuthError):
        push_blob(make_client(), ref, digest_of(DATA), len(DATA), io.BytesIO(DATA))
    alice = make_client(credentials=lambda r: Credentials("alice", USERS["alice"]))
    assert push_blob(alice, ref, digest_of(DATA), len(DATA), io.BytesIO(DATA), chunk_size=200_000) is True
