"""Auth against real registries: htpasswd Basic, and token auth backed by tests/support/tokenserver."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time

import pytest
import requests

from lazylayer.shared.errors import AuthError, RegistryError
from lazylayer.workers.registry.auth import Authenticator, Credentials, DockerConfigCredentials, parse_challenges
from lazylayer.workers.registry.deadline import job_deadline
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.manifests import resolve_manifest
from lazylayer.workers.registry.ranges import ByteRange
from lazylayer.workers.registry.reference import parse_reference
from tests.registry.helpers import make_client
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.registry import USERS, Layer, push_image
from tests.support.tokenserver import SERVICE

ALICE = Credentials("alice", USERS["alice"])


def lookup_for(host, creds):
    return lambda registry: creds if registry == host else None


def write_docker_config(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope="module")
def basic_image(htpasswd_registry):
    push_image(htpasswd_registry, "team/app", "v1", [Layer(b"layer-bytes" * 100)])
    return parse_reference(f"{htpasswd_registry.host}/team/app:v1")


@pytest.fixture(scope="module")
def token_images(token_registry):
    push_image(token_registry, "public/app", "v1", [Layer(b"public layer" * 100)])
    push_image(token_registry, "private/app", "v1", [Layer(b"private layer" * 100)])
    return (parse_reference(f"{token_registry.host}/public/app:v1"),
            parse_reference(f"{token_registry.host}/private/app:v1"))


def test_challenge_parsing():
    found = parse_challenges('Bearer realm="https://auth.example/token?x=1,2",service="reg, io",'
                             'scope="repository:a/b:pull,push", Basic realm="r"')
    assert [c.scheme for c in found] == ["bearer", "basic"]
    assert found[0].params == {"realm": "https://auth.example/token?x=1,2", "service": "reg, io",
                               "scope": "repository:a/b:pull,push"}
    assert found[1].params == {"realm": "r"}


def test_basic_auth_with_credentials(basic_image):
    client = make_client(credentials=lookup_for(basic_image.registry, ALICE))
    manifest, _ = resolve_manifest(client, basic_image)
    layer = manifest.layers[0]
    assert client.read_ranges(basic_image, layer.digest, [ByteRange(0, 11)]) == [b"layer-bytes"]


def test_basic_auth_without_or_with_wrong_credentials_is_an_auth_error(basic_image):
    with pytest.raises(AuthError, match="requires credentials"):
        resolve_manifest(make_client(), basic_image)
    wrong = Credentials("alice", "not-the-password-xyz")
    with pytest.raises(AuthError) as caught:
        resolve_manifest(make_client(credentials=lookup_for(basic_image.registry, wrong)), basic_image)
    assert caught.value.status == 401
    assert "not-the-password-xyz" not in str(caught.value) and "not-the-password-xyz" not in repr(caught.value)
    assert "not-the-password-xyz" not in repr(wrong)


def test_basic_auth_from_docker_config(basic_image, tmp_path):
    auth = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    path = write_docker_config(tmp_path, {"auths": {f"http://{basic_image.registry}/v2/": {"auth": auth}}})
    client = make_client(credentials=DockerConfigCredentials(path))
    assert resolve_manifest(client, basic_image)[0].layers


def test_credential_helper(basic_image, tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-lazytest"
    helper.parent.mkdir()
    helper.write_text("#!/bin/sh\nread server\n"
                      f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{USERS['alice']}\"}}' \"$server\"\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    path = write_docker_config(tmp_path, {"credHelpers": {basic_image.registry: "lazytest"}})
    client = make_client(credentials=DockerConfigCredentials(path))
    assert resolve_manifest(client, basic_image)[0].layers
    missing = write_docker_config(tmp_path, {"credsStore": "not-installed-helper"})
    assert DockerConfigCredentials(missing)(basic_image.registry) is None


def test_anonymous_token_flow(token_registry, token_images):
    public, private = token_images
    client = make_client()
    before = len(token_registry.token_server.issued)
    manifest, _ = resolve_manifest(client, public)
    for _ in range(3):
        client.read_ranges(public, manifest.layers[0].digest, [ByteRange(0, 6)])
    assert len(token_registry.token_server.issued) - before == 1  # cached per scope
    with pytest.raises(AuthError):
        resolve_manifest(client, private)


def test_credentialed_token_flow_and_refresh(token_registry, token_images):
    _, private = token_images
    client = make_client(credentials=lookup_for(private.registry, ALICE))
    manifest, _ = resolve_manifest(client, private)
    issued = token_registry.token_server.issued
    assert issued[-1]["user"] == "alice"
    # An expired token is renewed before use; a token the registry rejects is replaced on 401.
    tokens = client.auth._tokens
    for token in tokens.values():
        token.expires = time.monotonic() - 1
    count = len(issued)
    client.read_ranges(private, manifest.layers[0].digest, [ByteRange(0, 7)])
    assert len(issued) == count + 1
    for token in tokens.values():
        token.value = "not.a.valid-token"
    assert client.read_ranges(private, manifest.layers[0].digest, [ByteRange(0, 7)]) == [b"private"]
    assert len(issued) == count + 2


def test_wrong_password_at_token_service(token_images):
    _, private = token_images
    client = make_client(credentials=lookup_for(private.registry, Credentials("alice", "bad-secret-42")))
    with pytest.raises(AuthError, match="refused a token") as caught:
        resolve_manifest(client, private)
    assert "bad-secret-42" not in str(caught.value)


def test_identity_token_from_docker_config(token_registry, token_images, tmp_path):
    _, private = token_images
    answer = requests.post(token_registry.token_server.realm, timeout=10, data={
        "grant_type": "password", "username": "alice", "password": USERS["alice"], "access_type": "offline",
        "service": "lazylayer-test-registry", "client_id": "test"}).json()
    path = write_docker_config(tmp_path, {"auths": {private.registry: {"identitytoken": answer["refresh_token"]}}})
    client = make_client(credentials=DockerConfigCredentials(path))
    assert resolve_manifest(client, private)[0].layers
    assert token_registry.token_server.issued[-1]["user"] == "alice"


def test_mirror_gets_its_own_credentials_not_the_origins(htpasswd_registry, basic_image):
    asked = []

    def lookup(host):
        asked.append(host)
        return ALICE if host == htpasswd_registry.host else Credentials("origin-user", "origin-secret")

    options = RegistryOptions(max_retries=0, mirrors={"origin.invalid": (htpasswd_registry.url,)})
    client = make_client(options, credentials=lookup)
    assert resolve_manifest(client, parse_reference("origin.invalid/team/app:v1"))[0].layers
    assert set(asked) == {htpasswd_registry.host}


def test_trickling_token_service_costs_the_job_its_deadline_not_a_thread(token_registry):
    """The realm is any URL a registry names: a token service answering one byte at a time
    (each within the idle timeout) used to hold the worker thread for as long as it liked."""
    server = token_registry.token_server
    proxy = FaultProxy(server.realm.split("/")[2])
    proxy.add(Rule("trickle", times=None, path=r"^/token", interval=0.3))
    challenge = requests.Response()
    challenge.status_code = 401
    challenge.headers["WWW-Authenticate"] = f'Bearer realm="{proxy.url}/token",service="{SERVICE}"'
    auth = Authenticator(requests.Session(), None, 5.0, lambda host: True, min_rate=64 << 10)
    outcome: list[BaseException] = []

    def fetch() -> None:
        with job_deadline(2.0):
            try:
                auth.challenge(token_registry.host, token_registry.host, "repository:public/app:pull", challenge)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(15)
    outlived = thread.is_alive()
    proxy.release()
    proxy.stop()
    assert not outlived, "the token request outlived its job's deadline"
    assert len(outcome) == 1 and isinstance(outcome[0], RegistryError), outcome
    assert "token service" in str(outcome[0]) and "deadline" in str(outcome[0])


def test_the_challenge_answer_keeps_the_connection(basic_image, htpasswd_registry):
    """The 401 that starts every session is read, not dropped: the authenticated retry and the
    reads after it go over the same connection (a new one would cost a TLS handshake)."""
    proxy = FaultProxy(htpasswd_registry.host)
    try:
        ref = parse_reference(f"{proxy.host}/team/app:v1")
        client = make_client(credentials=lookup_for(proxy.host, ALICE))
        manifest, _ = resolve_manifest(client, ref)
        assert client.read_ranges(ref, manifest.layers[0].digest, [ByteRange(0, 11)]) == [b"layer-bytes"]
        assert [s.status for s in proxy.seen][0] == 401
        assert proxy.connections == 1
    finally:
        proxy.stop()
