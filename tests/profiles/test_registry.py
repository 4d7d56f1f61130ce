"""Profiles in a real registry (Debian's docker-registry 2.8, no referrers API): pushed as an OCI
artifact whose subject is the image manifest and listed in the sha256-<hex> fallback tag; pulled
through the referrers API when a registry has one (the proxy plays that registry), else through
the tag; whatever comes back is checked before it is believed."""

from __future__ import annotations

import json

import pytest
import requests

from lazylayer.shared.errors import FormatError, NotFoundError
from lazylayer.shared.store.profiles import PROFILE_MEDIA_TYPE, Profile, ProfileChunk
from lazylayer.workers.profiles import fallback_tag, pull_profile, push_profile
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.manifests import Manifest, resolve_manifest
from lazylayer.workers.registry.reference import parse_reference
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.registry import (OCI_INDEX, OCI_MANIFEST, Layer, RunningRegistry, push_blob, push_image,
                                   push_manifest)

D = "sha256:" + "d" * 64


def image(registry: RunningRegistry, repository: str, content: bytes) -> tuple[RegistryClient, Manifest]:
    push_image(registry, repository, "v1", [Layer(content)])
    client = RegistryClient()
    return client, resolve_manifest(client, parse_reference(f"{registry.host}/{repository}:v1"))[0]


def profile_of(manifest: Manifest, runs: int = 1) -> Profile:
    layer = manifest.layers[0].digest
    return Profile(manifest.digest, runs, tuple(ProfileChunk(layer, n, 0, 10, D, 1, n) for n in (2, 3, 5)))


def test_push_then_pull_through_the_fallback_tag_keeping_other_referrers(registry: RunningRegistry) -> None:
    client, manifest = image(registry, "prof/a", b"a" * 100)
    ref = parse_reference(f"{registry.host}/prof/a:v1")
    # someone else's referrer (a signature) is already listed in the tag
    other = {"mediaType": OCI_MANIFEST, "digest": manifest.digest, "size": len(manifest.raw),
             "artifactType": "application/vnd.example.signature"}
    push_manifest(registry, "prof/a", fallback_tag(manifest.digest),
                  json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [other]}).encode(), OCI_INDEX)
    push_profile(client, ref, manifest, profile_of(manifest))
    newest = push_profile(client, ref, manifest, profile_of(manifest, runs=2))
    index = requests.get(f"{registry.url}/v2/prof/a/manifests/{fallback_tag(manifest.digest)}",
                         headers={"Accept": OCI_INDEX}, timeout=10).json()
    assert [d["artifactType"] for d in index["manifests"]] == ["application/vnd.example.signature",
                                                               PROFILE_MEDIA_TYPE]
    artifact = requests.get(f"{registry.url}/v2/prof/a/manifests/{newest}", headers={"Accept": OCI_MANIFEST},
                            timeout=10).json()
    assert artifact["subject"]["digest"] == manifest.digest and artifact["artifactType"] == PROFILE_MEDIA_TYPE
    profile, digest = pull_profile(client, ref, manifest.digest, 1 << 20)
    assert (profile, digest) == (profile_of(manifest, runs=2), newest)
    # the image itself is untouched: same manifest digest
    assert resolve_manifest(client, ref)[0].digest == manifest.digest


def test_pull_refuses_what_does_not_hold_up(registry: RunningRegistry) -> None:
    client, a = image(registry, "prof/b", b"b" * 100)
    _, b = image(registry, "prof/c", b"c" * 100)
    ref_a, ref_c = parse_reference(f"{registry.host}/prof/b:v1"), parse_reference(f"{registry.host}/prof/c:v1")
    with pytest.raises(NotFoundError, match="no lazylayer profile refers to"):
        pull_profile(client, ref_a, a.digest, 1 << 20)
    artifact = push_profile(client, ref_a, a, profile_of(a))
    with pytest.raises(FormatError, match="more than the 100-byte limit"):
        pull_profile(client, ref_a, a.digest, 100)
    # image c's referrers tag lists a's profile (copied over, or a lie): not c's profile
    body = requests.get(f"{registry.url}/v2/prof/b/manifests/{artifact}", headers={"Accept": OCI_MANIFEST},
                        timeout=10).content
    for digest in json.loads(body)["layers"][0]["digest"], json.loads(body)["config"]["digest"]:
        blob = requests.get(f"{registry.url}/v2/prof/b/blobs/{digest}", timeout=10).content
        push_blob(registry, "prof/c", blob)
    push_manifest(registry, "prof/c", artifact, body, OCI_MANIFEST)
    push_manifest(registry, "prof/c", fallback_tag(b.digest), json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": artifact, "size": len(body), "artifactType": PROFILE_MEDIA_TYPE}]
    }).encode(), OCI_INDEX)
    with pytest.raises(FormatError, match=f"refers to '{a.digest}', not to image manifest {b.digest}"):
        pull_profile(client, ref_c, b.digest, 1 << 20)
    with pytest.raises(FormatError, match="is of image manifest"):
        push_profile(client, ref_c, b, profile_of(a))
    with pytest.raises(FormatError, match="more than the 100-byte limit"):
        push_profile(client, ref_c, b, profile_of(b), max_bytes=100)


def test_referrers_api_is_asked_first(registry: RunningRegistry) -> None:
    client, manifest = image(registry, "prof/d", b"d" * 100)
    artifact = push_profile(client, parse_reference(f"{registry.host}/prof/d:v1"), manifest, profile_of(manifest))
    proxy = FaultProxy(registry.host)
    try:
        # a registry with the referrers API, and a stale fallback tag naming nothing
        proxy.add(Rule("serve", times=None, path=r"/referrers/", headers={"Content-Type": OCI_INDEX},
                       body=json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                           {"mediaType": OCI_MANIFEST, "digest": artifact, "size": 1,
                            "artifactType": PROFILE_MEDIA_TYPE}]}).encode()))
        proxy.add(Rule("status", times=None, status=404, path=r"/manifests/sha256-"))
        ref = parse_reference(f"{proxy.host}/prof/d:v1")
        profile, digest = pull_profile(RegistryClient(), ref, manifest.digest, 1 << 20)
        assert (profile, digest) == (profile_of(manifest), artifact)
        assert any("/referrers/" in s.path for s in proxy.seen)
        assert not any("/manifests/sha256-" in s.path for s in proxy.seen)
    finally:
        proxy.stop()
