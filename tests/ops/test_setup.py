"""scripts/setup leaves the user's own services alone: it never stops or disables a docker-registry
service it did not install, and when it installs the package itself, the package's postinst is
told not to start one (policy-rc.d, present only during our install).

apt-get, dpkg-query and systemctl are stand-ins on PATH that record what they were asked: the
script's decisions are what is tested, not Debian's packaging."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POLICY = Path("/usr/sbin/policy-rc.d")


def stand_ins(bin_dir: Path, log: Path, missing: str) -> None:
    """dpkg-query says only ``missing`` is not installed; apt-get records its arguments and what
    policy-rc.d answered during the install; systemctl records its arguments."""
    bin_dir.mkdir()
    scripts = {
        "dpkg-query": f'[ "${{@: -1}}" = "{missing}" ] && exit 1; printf "install ok installed"\n',
        "apt-get": f'echo "apt-get $*" >>{log}\n'
                   f'if [ "$1" = install ] || [ "$2" = install ]; then\n'
                   f'  if [ -x {POLICY} ]; then {POLICY} docker-registry start; echo "policy-rc.d $?" >>{log};'
                   f' else echo "policy-rc.d none" >>{log}; fi\nfi\n',
        "systemctl": f'echo "systemctl $*" >>{log}\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)


def run_setup(tmp_path: Path, missing: str, repo: Path = REPO) -> list[str]:
    """Run scripts/setup in a private mount namespace whose /usr/sbin has no policy-rc.d (this
    machine's image ships one; the script must behave as on a plain Debian install)."""
    log = tmp_path / "calls.log"
    log.touch()
    stand_ins(tmp_path / "bin", log, missing)
    sbin = tmp_path / "sbin"
    shell = (f"cp -a /usr/sbin {sbin} && rm -f {sbin}/policy-rc.d && mount --bind {sbin} /usr/sbin && "
             f"exec {repo / 'scripts' / 'setup'}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_an_installed_registry_service_is_left_alone(tmp_path):
    calls = run_setup(tmp_path, missing="nothing-is-missing")
    assert not [c for c in calls if c.startswith("systemctl")], calls
    assert not [c for c in calls if c.startswith("apt-get")], calls


def test_our_own_install_starts_no_registry_and_leaves_no_policy(tmp_path):
    calls = run_setup(tmp_path, missing="docker-registry")
    assert "policy-rc.d 101" in calls  # postinst's invoke-rc.d / deb-systemd-invoke start nothing
    assert [c for c in calls if c.startswith("systemctl")] == ["systemctl disable docker-registry"]
    assert not (tmp_path / "sbin" / "policy-rc.d").exists()


def test_a_fresh_clone_is_set_up_to_the_end(tmp_path):
    """A clone has no venv and no install stamp: setup makes the venv, installs the project (its C
    library built), compiles the bytecode and writes the daemon's start-up list, exit status 0."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    run_setup(tmp_path, missing="nothing-is-missing", repo=clone)
    venv = clone / ".venv"
    assert (venv / ".lazylayer-installed").exists()
    assert list(clone.glob("daemon/_dircache*.so"))
    names = (venv / "share" / "lazylayer" / "start-files").read_text().splitlines()
    assert str(clone / "daemon" / "__pycache__" / "service.cpython-311.pyc") in names
