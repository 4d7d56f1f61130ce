"""`fuse.store_group` opens the store to one group, and only to it; a mirror's credentials never
show up in logs, `config show` or `status`."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import requests

from lazylayer.daemon.layout import encode_ref
from lazylayer.workers.registry.local import free_port
from tests.fuse.daemonproc import start_daemon
from tests.security.conftest import as_nobody, public_workdir

PASSWORD = "hunter2-not-for-logs"


def test_the_store_group_may_use_the_store_and_cause_fetches(registry, suid_image: str):
    workdir = public_workdir()
    daemon = start_daemon(workdir / "d", workers=1, config={"fuse": {"store_group": "nogroup"}})
    try:
        ref_dir = daemon.mountpoint / encode_ref(suid_image)
        st = ref_dir.parent.stat()
        assert stat.S_IMODE(st.st_mode) == 0o550 and st.st_gid == 65534
        digest = _digest_of(registry, suid_image)
        listing = as_nobody("ls", str(ref_dir / digest / "diff" / "etc"))  # nobody's group is nogroup
        assert listing.returncode == 0, listing.stderr
        assert "passwd" in listing.stdout
        assert [layer["digest"] for layer in daemon.call("status")["layers"]] == [digest]
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _digest_of(registry, ref: str) -> str:
    repo, _, tag = ref.split("/", 1)[1].partition(":")
    manifest = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    return manifest["layers"][0]["digest"]


def test_mirror_credentials_stay_out_of_logs_config_and_status(registry, suid_image: str, tmp_path: Path):
    mirror = f"http://bob:{PASSWORD}@127.0.0.1:9"  # nothing listens on port 9: the mirror fails
    port = free_port()
    daemon = start_daemon(tmp_path / "d", workers=1,
                          config={"registry": {"mirrors": {registry.host: [mirror]}},
                                  "metrics": {"address": f"127.0.0.1:{port}"}})
    try:
        image = daemon.call("image", {"ref": suid_image})
        assert image["layers"]
        shown = daemon.cli("config", "show", "--json")
        assert shown.returncode == 0, shown.stderr
        mirrors = [row for row in json.loads(shown.stdout) if row["key"] == "registry.mirrors"]
        assert mirrors and "bob" not in json.dumps(mirrors) and PASSWORD not in shown.stdout
        assert "***@127.0.0.1:9" in json.dumps(mirrors)
        assert PASSWORD not in json.dumps(daemon.call("status"))
        assert PASSWORD not in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        daemon.stop()
    log = daemon.log()
    assert "***@127.0.0.1:9" in log  # the mirror's failure was logged...
    assert PASSWORD not in log and "bob:" not in log  # ...without its credentials
