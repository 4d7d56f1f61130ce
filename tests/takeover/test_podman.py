"""Real podman on the layer store: a running container keeps reading its files (each checked by
sha256 inside the container) while the front is SIGKILLed twice and taken over."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path

import pytest

from tests.fuse.daemonproc import start_daemon, unmount_under
from tests.ops.test_daemon_ops import wait_for
from tests.security.test_podman import Podman, podman_root  # noqa: F401  (module-scoped fixture)
from tests.support.layers import binary_items, build_layer, directory, file
from tests.support.registry import Layer, RunningRegistry, push_image
from tests.takeover.harness import Holder

FILES = 200
TOOLS = ["/bin/sh", "/usr/bin/sha256sum", "/usr/bin/sleep"]
SCRIPT = 'for f in /data/*; do sha256sum "$f" || echo "FAILED $f"; sleep 0.03; done; echo DONE'


@pytest.fixture(scope="module")
def reader_image(registry: RunningRegistry) -> tuple[str, dict[str, str]]:
    """Tools to hash files, and FILES files of 16 KiB whose hashes the test knows."""
    rng = random.Random(20)
    data = {f"data/f{i:04d}": rng.randbytes(16 << 10) for i in range(FILES)}
    items = [directory(d) for d in ("bin/", "usr/", "usr/bin/", "lib/", "lib64/", "lib/x86_64-linux-gnu/", "data/",
                                    "dev/", "proc/", "sys/", "tmp/", "run/", "etc/")]
    for tool in TOOLS:
        items += binary_items(tool)
        items.append(file(tool.lstrip("/"), Path(tool).read_bytes(), 0o755))
    items += [file(name, content) for name, content in data.items()]
    unique = {item.name: item for item in items}  # a library two tools need, once
    built = build_layer(list(unique.values()))
    push_image(registry, "takeover/reader", "v1",
               [Layer(built.blob, annotations=dict(built.result.annotations()), diff_id=built.result.diff_id)])
    return f"{registry.host}/takeover/reader:v1", {f"/{n}": hashlib.sha256(c).hexdigest() for n, c in data.items()}


def test_a_container_keeps_reading_across_front_kills(reader_image: tuple[str, dict[str, str]], podman_root: Path):
    root = podman_root
    ref, hashes = reader_image
    workdir = root / "d"
    front = start_daemon(workdir, workers=1, config={"background": {"enabled": False},
                                                      "prefetch": {"enabled": False}})
    holder = Holder(front.config_path, front.run_dir, root / "holder.log")
    podman = Podman(root / "podman", front.mountpoint)
    try:
        podman.ok("pull", "--tls-verify=false", ref)
        podman.ok("run", "-d", "--name", "reader", ref, "/bin/sh", "-c", SCRIPT)
        for _ in range(2):
            time.sleep(1.5)
            front.kill()
            front = start_daemon(workdir, workers=1, run_dir=front.run_dir,
                                 config={"background": {"enabled": False}, "prefetch": {"enabled": False}})
        # podman's `use` reference on its layer came through both takeovers
        wait_for("the layer held again", lambda: [l["references"] for l in front.call("status")["layers"]] == [1])
        assert podman.ok("wait", "reader", timeout=120).strip() == "0"
        out = podman.ok("logs", "reader")
        assert front.call("status")["takeovers"] == 2
    finally:
        podman.reset()
        front.stop()
        holder.stop()
        unmount_under(workdir)
    lines = out.splitlines()
    assert lines[-1] == "DONE" and not [l for l in lines if l.startswith("FAILED")], out[-2000:]
    assert {path: digest for digest, path in (l.split() for l in lines[:-1])} == hashes
