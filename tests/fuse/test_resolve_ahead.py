"""Looking up one layer of an image resolves all of its layers at once (`prefetch.image_layers`):
an overlay mount looks its lower dirs up one after another, and each resolve is a worker job, so
they now run side by side. Resolving ahead takes no lasting reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuse.daemonproc import start_daemon
from tests.ops.test_daemon_ops import wait_for
from tests.support.fetchstack import PushedImage


@pytest.mark.parametrize("ahead", [True, False])
def test_one_layer_looked_up_resolves_the_whole_image(app_image: PushedImage, tmp_path: Path, ahead: bool):
    daemon = start_daemon(tmp_path / "d", workers=2, config={"prefetch": {"image_layers": ahead},
                                                             "background": {"enabled": False}})
    try:
        os.stat(daemon.layer_dir(app_image.ref, app_image.layers[0].digest))
        everything = {layer.digest for layer in app_image.layers}
        if ahead:
            status = wait_for("every layer resolved", lambda: (s := daemon.call("status")) and
                              {l["digest"] for l in s["layers"]} == everything and s, timeout=30)
            assert all(l["references"] == 0 for l in status["layers"])
        else:
            assert {l["digest"] for l in daemon.call("status")["layers"]} == {app_image.layers[0].digest}
    finally:
        daemon.stop()
