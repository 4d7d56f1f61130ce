"""An embedded OCI registry: Debian's `docker-registry` on a free loopback port.

What the main job (`lazylayer demo`) and the benchmarks use when no registry is given, and what
the test fixtures build on (adding auth and TLS through ``extra_yaml``). It is the real
distribution registry, not a stand-in: the product talks to it exactly as to any other.
The process dies with its parent (PR_SET_PDEATHSIG), so a crashed caller leaves no registry behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from lazylayer.shared.errors import RegistryError
from lazylayer.shared.procs import die_with_parent, stop_process

REGISTRY_BINARY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalRegistry:
    """A running registry; ``host`` is what goes into image references (`127.0.0.1:PORT`)."""

    host: str
    process: subprocess.Popen[bytes]
    root: Path
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def stop(self) -> None:
        stop_process(self.process, timeout=10)

    def __enter__(self) -> "LocalRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_registry(root: Path, *, extra_yaml: str = "", scheme: str = "http",
                         verify: str | bool = True, startup_timeout: float = 15.0) -> LocalRegistry:
    """Start a registry storing under ``root`` and return once `/v2/` answers.

    ``extra_yaml`` is appended to the config (top-level `auth:` blocks, or indented `  tls:`
    lines that continue the `http:` block, which comes last).
    """
    if not os.access(REGISTRY_BINARY, os.X_OK):
        raise RegistryError(f"{REGISTRY_BINARY} is missing: install Debian's docker-registry package "
                            "(scripts/setup does)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: lazylayer-local-{port}\n"
        + extra_yaml
    )
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGKILL))
    registry = LocalRegistry(f"127.0.0.1:{port}", process, root, scheme)
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            if requests.get(f"{registry.url}/v2/", timeout=1, verify=verify).status_code in (200, 401):
                return registry
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            registry.stop()
            tail = (root / "registry.log").read_text(errors="replace")[-2000:]
            raise RegistryError(f"docker-registry did not start on 127.0.0.1:{port}: {tail.strip()}")
        time.sleep(0.05)
