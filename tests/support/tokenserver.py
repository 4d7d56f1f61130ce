"""A small token service for docker-registry's `token` auth, run by the tests.

It implements distribution's token spec: `GET /token?service=&scope=` (anonymous, or with Basic
credentials) and the OAuth2 `POST /token` (password and refresh_token grants; a password grant
with `access_type=offline` also returns a refresh token, which is what docker stores as
`identitytoken`). Tokens are RS256 JWTs whose `kid` is the libtrust key id of the key in the
registry's `rootcertbundle`. Keys, the certificate and signatures are made by the openssl CLI.

Policy: known users get pull+push everywhere; anonymous callers get pull, except on repositories
under `private/`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SERVICE = "lazylayer-test-registry"
ISSUER = "lazylayer-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(spki_der: bytes) -> str:
    """docker/libtrust's key id: base32 of the first 240 bits of sha256(SPKI), in 4-char groups."""
    encoded = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


@dataclass
class TokenServer:
    """Start with `TokenServer.start(workdir, users)`; `realm` goes into the registry config."""

    workdir: Path
    users: dict[str, str]
    lifetime: int = 300
    issued: list[dict] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _kid: str = ""

    @property
    def key_path(self) -> Path:
        return self.workdir / "token.key"

    @property
    def cert_path(self) -> Path:
        return self.workdir / "token.crt"

    @property
    def realm(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    @classmethod
    def start(cls, workdir: Path, users: dict[str, str], lifetime: int = 300) -> "TokenServer":
        workdir.mkdir(parents=True, exist_ok=True)
        server = cls(workdir, users, lifetime)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(server.key_path),
             "-out", str(server.cert_path), "-days", "2", "-subj", "/CN=lazylayer-test-token"],
            check=True, capture_output=True,
        )
        spki = subprocess.run(["openssl", "pkey", "-in", str(server.key_path), "-pubout", "-outform", "DER"],
                              check=True, capture_output=True).stdout
        server._kid = libtrust_key_id(spki)
        server._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(server))
        server._server.daemon_threads = True
        threading.Thread(target=server._server.serve_forever, daemon=True, name="tokenserver").start()
        return server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def grant(self, user: str | None, scopes: list[str]) -> list[dict]:
        """The access claims this policy gives ``user`` (None = anonymous) for the asked scopes."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            allowed = {"pull", "push"} if user else ({"pull"} if not name.startswith("private/") else set())
            granted = [a for a in actions.split(",") if a in allowed]
            if granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def issue(self, user: str | None, scopes: list[str]) -> str:
        """A signed JWT for ``user`` with what the policy allows of ``scopes``."""
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + self.lifetime,
            "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": self.grant(user, scopes),
        }
        header = {"typ": "JWT", "alg": "RS256", "kid": self._kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key_path)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        self.issued.append({"user": user, "scopes": scopes, "access": claims["access"]})
        return f"{signing_input}.{_b64url(signature)}"


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _basic_user(self) -> tuple[bool, str | None]:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return True, None
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return server.users.get(user) == password, user

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            ok, user = self._basic_user()
            if not ok:
                self._reply(401, {"details": "wrong username or password"})
                return
            token = server.issue(user, query.get("scope", []))
            self._reply(200, {"token": token, "access_token": token, "expires_in": server.lifetime})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            scopes = form.get("scope", "").split() if form.get("scope") else []
            grant = form.get("grant_type")
            if grant == "password" and server.users.get(form.get("username", "")) == form.get("password"):
                user = form["username"]
            elif grant == "refresh_token" and form.get("refresh_token") in server.refresh_tokens:
                user = server.refresh_tokens[form["refresh_token"]]
            else:
                self._reply(401, {"details": "invalid grant"})
                return
            token = server.issue(user, scopes)
            body = {"access_token": token, "expires_in": server.lifetime}
            if grant == "password" and form.get("access_type") == "offline":
                refresh = secrets.token_hex(16)
                server.refresh_tokens[refresh] = user
                body["refresh_token"] = refresh
            self._reply(200, body)

    return Handler
