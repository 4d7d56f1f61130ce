"""Real OCI registries for tests: Debian's `docker-registry` on a free 127.0.0.1 port.

`start_registry(tmp_path, auth=None | "htpasswd" | "token")` starts one and waits until it
answers; the pytest fixtures `registry`, `htpasswd_registry` and `token_registry` wrap it (one per
test module, stopped at its end). The registry process is started with PR_SET_PDEATHSIG, so even
a killed pytest leaves no registry behind.

Push helpers (`push_blob`, `push_image`) speak the distribution API with plain requests, on
purpose independent of lazylayer's own client, so tests of that client set up their data with
different code than the code under test.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import requests

from lazylayer.workers.registry.local import LocalRegistry, free_port, start_local_registry
from tests.support.tokenserver import ISSUER, SERVICE, TokenServer

USERS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _bcrypt(password: str) -> str:
    """bcrypt via the C library's crypt(3) (libxcrypt); cost 4 keeps each request cheap."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@dataclass
class RunningRegistry(LocalRegistry):
    """The embedded registry (``host`` goes into image references) plus what tests set up
    around it: users and a token server for auth, the CA of its TLS certificate."""

    auth: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    token_server: TokenServer | None = None
    #: CA that signed the registry's certificate when it serves TLS (None: plain HTTP)
    ca_file: Path | None = None
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def verify(self) -> str | bool:
        """What to pass as requests' ``verify=`` for this registry."""
        return str(self.ca_file) if self.ca_file else True

    def stop(self) -> None:
        super().stop()
        if self.token_server is not None:
            self.token_server.stop()

    def admin_headers(self, repository: str) -> dict[str, str]:
        """Authorization for pushing to ``repository`` as the first user (none without auth)."""
        user, password = next(iter(USERS.items()))
        if self.auth == "htpasswd":
            return {"Authorization": requests.auth._basic_auth_str(user, password)}
        if self.auth == "token":
            assert self.token_server is not None
            if repository not in self._tokens:
                self._tokens[repository] = self.token_server.issue(user, [f"repository:{repository}:pull,push"])
            return {"Authorization": f"Bearer {self._tokens[repository]}"}
        return {}


def make_tls_certificate(workdir: Path, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``ip`` signed by it: (ca, cert, key)."""
    ca_key, ca, key, csr, cert, ext = (workdir / n for n in
                                       ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "san.ext"))
    ext.write_text(f"subjectAltName=IP:{ip}\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=lazylayer-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={ip}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


def start_registry(tmp_path: Path, auth: str | None = None, *, token_lifetime: int = 300,
                   tls: bool = False, proxy_of: str | None = None) -> RunningRegistry:
    """Start a registry storing under ``tmp_path``; ``auth`` is None, "htpasswd" or "token";
    ``tls`` serves HTTPS with a certificate from a fresh test CA (``RunningRegistry.ca_file``).
    ``proxy_of`` (an origin URL) runs it as a pull-through cache of that registry
    (distribution's proxy mode: read-only, fills its storage from the origin on a miss)."""
    root = tmp_path / ("proxy" if proxy_of else "registry")
    root.mkdir(parents=True, exist_ok=True)
    auth_yaml = f"proxy:\n  remoteurl: {proxy_of}\n" if proxy_of else ""
    token_server = None
    if auth == "htpasswd":
        htpasswd = root / "htpasswd"
        htpasswd.write_text("".join(f"{u}:{_bcrypt(p)}\n" for u, p in USERS.items()))
        auth_yaml += f"auth:\n  htpasswd:\n    realm: lazylayer-test\n    path: {htpasswd}\n"
    elif auth == "token":
        token_server = TokenServer.start(root / "token", USERS, token_lifetime)
        auth_yaml += (f"auth:\n  token:\n    realm: {token_server.realm}\n    service: {SERVICE}\n"
                     f"    issuer: {ISSUER}\n    rootcertbundle: {token_server.cert_path}\n")
    elif auth is not None:
        raise ValueError(f"unknown registry auth {auth!r}")
    ca_file, tls_yaml = None, ""
    if tls:
        ca_file, cert, key = make_tls_certificate(root)
        tls_yaml = f"  tls:\n    certificate: {cert}\n    key: {key}\n"
    local = start_local_registry(root, extra_yaml=tls_yaml + auth_yaml, scheme="https" if tls else "http",
                                 verify=str(ca_file) if ca_file else True)
    return RunningRegistry(local.host, local.process, root, local.scheme, auth, dict(USERS) if auth else {},
                           token_server, ca_file)


def _registry_fixture(auth: str | None):
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
        running = start_registry(tmp_path_factory.mktemp(f"registry-{auth or 'open'}"), auth)
        try:
            yield running
        finally:
            running.stop()

    return fixture


registry = _registry_fixture(None)
htpasswd_registry = _registry_fixture("htpasswd")
token_registry = _registry_fixture("token")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(reg: RunningRegistry, repository: str, data: bytes) -> str:
    """Upload ``data`` as a blob (monolithic POST+PUT); returns its digest."""
    digest = digest_of(data)
    headers = reg.admin_headers(repository)
    start = requests.post(f"{reg.url}/v2/{repository}/blobs/uploads/", headers=headers, timeout=30, verify=reg.verify)
    assert start.status_code == 202, start.text
    location = requests.compat.urljoin(reg.url, start.headers["Location"])
    put = requests.put(location, params={"digest": digest}, data=data, timeout=60, verify=reg.verify,
                       headers={**headers, "Content-Type": "application/octet-stream"})
    assert put.status_code == 201, put.text
    return digest


def push_manifest(reg: RunningRegistry, repository: str, reference: str, body: bytes, media_type: str) -> str:
    put = requests.put(f"{reg.url}/v2/{repository}/manifests/{reference}", data=body, timeout=30, verify=reg.verify,
                       headers={**reg.admin_headers(repository), "Content-Type": media_type})
    assert put.status_code == 201, put.text
    return digest_of(body)


@dataclass
class Layer:
    data: bytes
    media_type: str = OCI_LAYER_GZIP
    annotations: dict[str, str] = field(default_factory=dict)
    diff_id: str = ""


def push_image(reg: RunningRegistry, repository: str, tag: str, layers: list[Layer],
               *, architecture: str = "amd64", os_name: str = "linux") -> tuple[str, bytes]:
    """Push layers + a minimal config + an OCI manifest (layer annotations kept) under ``tag``.

    Returns (manifest digest, manifest bytes)."""
    descriptors = []
    for layer in layers:
        descriptor = {"mediaType": layer.media_type, "digest": push_blob(reg, repository, layer.data),
                      "size": len(layer.data)}
        if layer.annotations:
            descriptor["annotations"] = layer.annotations
        descriptors.append(descriptor)
    config = json.dumps({
        "architecture": architecture, "os": os_name, "config": {},
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id or digest_of(l.data) for l in layers]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": push_blob(reg, repository, config), "size": len(config)},
        "layers": descriptors,
    }).encode()
    return push_manifest(reg, repository, tag, manifest, OCI_MANIFEST), manifest


def push_index(reg: RunningRegistry, repository: str, tag: str,
               manifests: list[tuple[str, bytes, dict[str, str]]]) -> str:
    """Push an OCI index over already-pushed manifests given as (digest, bytes, platform)."""
    index = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": len(b), "platform": p}
                      for d, b, p in manifests],
    }).encode()
    return push_manifest(reg, repository, tag, index, OCI_INDEX)
