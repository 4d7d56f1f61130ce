from __future__ import annotations

import pytest

from lazylayer.workers.registry.hosts import RegistryOptions, endpoints_for
from lazylayer.workers.registry.reference import ReferenceError, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest, canonical", [
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None, "docker.io/library/ubuntu:latest"),
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, "docker.io/library/ubuntu:22.04"),
    ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
    ("index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine:latest"),
    ("ghcr.io/org/sub/app:v1", "ghcr.io", "org/sub/app", "v1", None, "ghcr.io/org/sub/app:v1"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("localhost:5000/app:1", "localhost:5000", "app", "1", None, "localhost:5000/app:1"),
    ("127.0.0.1:5000/a/b@" + DIGEST, "127.0.0.1:5000", "a/b", None, DIGEST, "127.0.0.1:5000/a/b@" + DIGEST),
    ("[::1]:5000/app:tag@" + DIGEST, "[::1]:5000", "app", "tag", DIGEST, "[::1]:5000/app:tag@" + DIGEST),
    ("[fe80::1]/x", "[fe80::1]", "x", "latest", None, "[fe80::1]/x:latest"),
    ("my-reg.example.com:443/a.b/c_d/e--f", "my-reg.example.com:443", "a.b/c_d/e--f", "latest", None,
     "my-reg.example.com:443/a.b/c_d/e--f:latest"),
])
def test_parse_and_normalise(text, registry, repository, tag, digest, canonical):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert str(ref) == canonical
    assert parse_reference(str(ref)) == ref
    assert ref.reference == (digest or tag)


def test_docker_hub_api_host():
    assert parse_reference("alpine").api_host == "registry-1.docker.io"
    assert parse_reference("quay.io/x/y").api_host == "quay.io"


@pytest.mark.parametrize("bad", [
    "", " ubuntu", "Ubuntu", "ubuntu:", "ubuntu:bad tag", "ubuntu@sha256:1234", "a//b", "host:5000/",
    "[::1/app", "ubuntu@md5", "x:" + "t" * 129, "-lead/app",
])
def test_invalid_references_are_refused(bad):
    with pytest.raises(ReferenceError):
        parse_reference(bad)


def test_endpoints_mirrors_then_origin_and_plain_http_for_loopback():
    options = RegistryOptions(mirrors={"docker.io": ("mirror.example", "http://10.0.0.1:5000/prefix/")},
                              plain_http=("10.0.0.1",), skip_verify=("insecure.example",), ca_file="/etc/ca.pem")
    found = endpoints_for("docker.io", options)
    assert [e.base for e in found] == ["https://mirror.example", "http://10.0.0.1:5000/prefix",
                                       "https://registry-1.docker.io"]
    assert [e.is_mirror for e in found] == [True, True, False]
    assert found[0].namespace == "docker.io" and found[-1].verify == "/etc/ca.pem"
    for loopback in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "localhost"):
        assert endpoints_for(loopback, RegistryOptions())[-1].base == f"http://{loopback}"
    assert endpoints_for("insecure.example", options)[-1].verify is False
    assert endpoints_for("quay.io", RegistryOptions())[-1].verify is True
