"""Registry authentication: credentials, challenges, tokens.

Flow (distribution's token spec): a request without credentials gets 401 with a
`WWW-Authenticate` challenge. `Basic` means "send username:password"; `Bearer realm=,service=,
scope=` means "get a token from realm" - anonymously, with Basic credentials, or with an OAuth2
refresh token (docker's `identitytoken`). Tokens are cached per (realm, service, scope) until
shortly before they expire, and dropped when the registry answers 401 to one.

Credentials come from a docker config.json (`auths` with `auth` or `identitytoken`, `credHelpers`
and `credsStore` via `docker-credential-<name> get`). Secrets live only in `Credentials`, whose
repr hides them; no error message or log line built here ever contains one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from lazylayer.shared.errors import AuthError, RegistryError
from lazylayer.workers.registry import deadline
from lazylayer.workers.registry.reference import DOCKER_HUB, DOCKER_HUB_API
from lazylayer.workers.registry.transport import Transient, body_pieces

log = logging.getLogger(__name__)

#: docker stores Docker Hub credentials under this legacy key
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
#: a token is renewed this long before it expires [s]
EXPIRY_MARGIN = 10.0
#: lifetime assumed when the token server does not state one (token spec default) [s]
DEFAULT_TOKEN_LIFETIME = 60.0
_CREDENTIAL_HELPER_TIMEOUT = 30.0
#: largest token answer read (tokens are JWTs of a few KiB) [bytes]
TOKEN_BODY_LIMIT = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """Username + password, or an identity (refresh) token. The repr never shows a secret."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


CredentialLookup = Callable[[str], "Credentials | None"]


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` header into challenges (quoted values may contain commas)."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme_match = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)").match(header, pos)
        if not scheme_match:
            break
        scheme = scheme_match.group(1)
        pos = scheme_match.end()
        params: dict[str, str] = {}
        while True:
            param = _PARAM.match(header, pos)
            if not param or param.end() == pos:
                break
            value = param.group(2) if param.group(2) is not None else param.group(3)
            params[param.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = param.end()
        challenges.append(Challenge(scheme.lower(), params))
    return challenges


def docker_config_path(explicit: str = "") -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("DOCKER_CONFIG"):
        return Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    return Path.home() / ".docker" / "config.json"


class DockerConfigCredentials:
    """Credentials for a registry host from a docker config.json, read once and kept."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = docker_config_path(os.fspath(path) if path else "")
        self._config = self._load()
        self._cache: dict[str, Credentials | None] = {}

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AuthError(f"cannot read docker config {self.path}: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise AuthError(f"docker config {self.path} is not a JSON object")
        return data

    def __call__(self, registry: str) -> Credentials | None:
        if registry not in self._cache:
            self._cache[registry] = self._lookup(registry)
        return self._cache[registry]

    def _lookup(self, registry: str) -> Credentials | None:
        keys = [registry]
        if registry in (DOCKER_HUB, DOCKER_HUB_API, "index.docker.io"):
            keys = [DOCKER_HUB_AUTH_KEY, "index.docker.io", DOCKER_HUB, DOCKER_HUB_API]
        helpers = self._config.get("credHelpers") or {}
        for key in keys:
            if key in helpers:
                return _run_credential_helper(helpers[key], key)
        auths = self._config.get("auths") or {}
        for key, entry in auths.items():
            if _auth_key_host(key) in keys or key in keys:
                creds = _from_auth_entry(entry, self.path)
                if creds:
                    return creds
        store = self._config.get("credsStore")
        if store:
            return _run_credential_helper(store, keys[0])
        return None


def _auth_key_host(key: str) -> str:
    """`https://host:5000/v1/` -> `host:5000` (docker accepts URLs as auths keys)."""
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def _from_auth_entry(entry: object, path: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("identitytoken"):
        username = ""
        if entry.get("auth"):
            username = _decode_auth(entry["auth"], path)[0]
        return Credentials(username=username, identity_token=str(entry["identitytoken"]))
    if entry.get("auth"):
        username, password = _decode_auth(entry["auth"], path)
        return Credentials(username, password)
    if entry.get("username"):
        return Credentials(str(entry["username"]), str(entry.get("password", "")))
    return None


def _decode_auth(value: str, path: Path) -> tuple[str, str]:
    try:
        username, _, password = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise AuthError(f"docker config {path}: an `auth` value is not base64 of user:password") from None
    return username, password


def _run_credential_helper(name: str, server: str) -> Credentials | None:
    """Ask `docker-credential-<name> get`; "not found" answers mean no credentials."""
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run(
            [program, "get"], input=server.encode(), capture_output=True,
            timeout=_CREDENTIAL_HELPER_TIMEOUT, check=False,
        )
    except FileNotFoundError:
        log.warning("credential helper %s is not installed; continuing without credentials", program)
        return None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} did not answer within {_CREDENTIAL_HELPER_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        if b"credentials not found" in done.stdout.lower() + done.stderr.lower():
            return None
        raise AuthError(f"credential helper {program} failed with exit status {done.returncode}")
    try:
        answer = json.loads(done.stdout)
        username, secret = str(answer.get("Username", "")), str(answer["Secret"])
    except (ValueError, KeyError, AttributeError):
        raise AuthError(f"credential helper {program} gave an answer that is not its JSON") from None
    if username == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


@dataclass
class _Token:
    value: str
    expires: float


class Authenticator:
    """Adds the right Authorization header per (host, scope); answers 401 challenges.

    Thread-safe: one instance is shared by a client's threads. Token requests go through the
    plain `session` (no retries of their own beyond the caller's), under the same limits as a
    registry's bodies (transport.py): the realm is whatever URL the registry names, so a token
    service that trickles its answer must cost the job its own deadline, never a worker thread.
    """

    def __init__(self, session: requests.Session, credentials: CredentialLookup | None,
                 timeout: float, verify_for: Callable[[str], bool | str], min_rate: float = 0.0) -> None:
        self._session = session
        self._lookup = credentials or (lambda registry: None)
        self._timeout = timeout
        self._min_rate = min_rate
        self._verify_for = verify_for
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, str], _Token] = {}

    def header(self, host: str, registry: str, scope: str) -> str | None:
        """The Authorization value to send to `host` now, if we know one (no network)."""
        with self._lock:
            challenge = self._challenges.get(host)
            if challenge is None:
                return None
            if challenge.scheme == "basic":
                creds = self._lookup(registry)
                return creds.basic_header() if creds and creds.password else None
            token = self._tokens.get(self._token_key(challenge, scope))
            if token and token.expires > time.monotonic():
                return f"Bearer {token.value}"
        return self._fetch_token(host, registry, scope)

    def challenge(self, host: str, registry: str, scope: str, response: requests.Response) -> str:
        """Handle a 401 from `host`: remember its challenge, drop a stale token, get a new header."""
        found = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        usable = [c for c in found if c.scheme in ("bearer", "basic")]
        if not usable:
            raise AuthError(f"{host} refused the request (401) without a Bearer or Basic challenge", 401)
        challenge = next((c for c in usable if c.scheme == "bearer"), usable[0])
        with self._lock:
            self._challenges[host] = challenge
            if challenge.scheme == "bearer":
                self._tokens.pop(self._token_key(challenge, scope), None)
        if challenge.scheme == "basic":
            creds = self._lookup(registry)
            if not creds or not creds.password:
                raise AuthError(f"{host} requires credentials (Basic auth) and none are configured for {registry}", 401)
            return creds.basic_header()
        header = self._fetch_token(host, registry, scope)
        assert header is not None
        return header

    @staticmethod
    def _token_key(challenge: Challenge, scope: str) -> tuple[str, str, str]:
        return (challenge.params.get("realm", ""), challenge.params.get("service", ""), scope)

    def _fetch_token(self, host: str, registry: str, scope: str) -> str | None:
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None or challenge.scheme != "bearer":
            return None
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise AuthError(f"{host} sent a Bearer challenge without a usable realm", 401)
        service = challenge.params.get("service", "")
        creds = self._lookup(registry)
        realm_host = realm.split("/")[2]
        timeout = min(self._timeout, deadline.remaining())
        if timeout <= 0:
            raise RegistryError(f"token service {realm_host}: the request's deadline passed before it could be sent")
        try:
            if creds and creds.identity_token:
                response = self._session.post(realm, timeout=timeout, verify=self._verify_for(realm_host), stream=True, data={
                    "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "service": service, "scope": scope, "client_id": "lazylayer",
                })
            else:
                params = {"scope": scope} if scope else {}
                if service:
                    params["service"] = service
                headers = {"Authorization": creds.basic_header()} if creds and creds.password else {}
                response = self._session.get(realm, params=params, headers=headers, timeout=timeout,
                                             verify=self._verify_for(realm_host), stream=True)
        except requests.RequestException as exc:
            raise RegistryError(f"token service {realm_host} unreachable: {type(exc).__name__}") from None
        try:
            answer = b"".join(body_pieces(response, TOKEN_BODY_LIMIT, f"token service {realm_host}", timeout,
                                          self._min_rate))
        except Transient as exc:
            raise RegistryError(f"token service {realm_host}: {exc}") from None
        if response.status_code in (401, 403):
            who = f"as {creds.username!r}" if creds and creds.username else "anonymously"
            raise AuthError(f"token service {realm_host} refused a token for {scope or 'the registry'} {who} "
                            f"({response.status_code})", response.status_code)
        if response.status_code != 200:
            raise RegistryError(f"token service {realm_host} answered {response.status_code}", response.status_code)
        try:
            body = json.loads(answer)
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(f"token service {realm_host} sent an answer that is not a token") from None
        if not value or not isinstance(value, str):
            raise AuthError(f"token service {realm_host} sent no token")
        expires = time.monotonic() + max(lifetime - EXPIRY_MARGIN, lifetime / 2)
        with self._lock:
            self._tokens[self._token_key(challenge, scope)] = _Token(value, expires)
        log.debug("got a token for %s scope %s (valid %.0fs)", host, scope, lifetime)
        return f"Bearer {value}"
