"""TLS: verified by default, a custom CA bundle works, skip_verify is per host.

Loopback hosts speak plain HTTP by default, so the TLS registry (on 127.0.0.1) is reached as an
explicit https:// mirror of a registry name that does not resolve."""

from __future__ import annotations

import pytest

from lazylayer.shared.errors import RegistryError
from lazylayer.workers.registry.hosts import RegistryOptions, endpoints_for
from lazylayer.workers.registry.manifests import resolve_manifest
from lazylayer.workers.registry.reference import parse_reference
from tests.registry.helpers import make_client
from tests.support.registry import Layer, push_image, start_registry

NAME = "registry.invalid"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    running = start_registry(tmp_path_factory.mktemp("tls"), tls=True)
    push_image(running, "secure/app", "v1", [Layer(b"over tls")])
    yield running
    running.stop()


def options(reg, **kwargs):
    return RegistryOptions(max_retries=1, mirrors={NAME: (f"https://{reg.host}",)}, **kwargs)


def test_tls_with_ca_bundle(tls_registry):
    client = make_client(options(tls_registry, ca_file=str(tls_registry.ca_file)))
    assert resolve_manifest(client, parse_reference(f"{NAME}/secure/app:v1"))[0].layers


def test_unknown_ca_is_refused_unless_skip_verify(tls_registry):
    ref = parse_reference(f"{NAME}/secure/app:v1")
    client = make_client(options(tls_registry))
    mirror = endpoints_for(NAME, client.options)[0]
    with pytest.raises(RegistryError, match=r"TLS with 127\.0\.0\.1:\d+ failed: its certificate is not trusted"):
        client.send("GET", f"{mirror.base}/v2/", ref=ref, endpoint=mirror)
    with pytest.raises(RegistryError):  # the mirror fails on TLS, the origin does not exist
        resolve_manifest(client, ref)
    client = make_client(options(tls_registry, skip_verify=(tls_registry.host,)))
    assert resolve_manifest(client, ref)[0].layers
