"""Root-only directories, files and sockets, whatever the umask.

Why: the cache holds the bytes of every image's files, including files that are 0600 inside the
image, and the run dir holds the sockets that steer the daemon and that workers join. A local user
who can read data.mdb reads those files; one who can connect to workers.sock gets jobs (and
heartbeats) as a worker. So every process that creates them sets a private umask first, and the
directories are made (or made again) 0700 explicitly, since an existing dir keeps the mode it was
created with.
"""

from __future__ import annotations

import os

PRIVATE_UMASK = 0o077


def private_umask() -> None:
    """Make everything this process creates from now on owner-only (daemon and worker start)."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: str) -> None:
    """Create ``path`` (and parents) if missing, and make it 0700 either way."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def private_file(path: str) -> None:
    """Make an existing file 0600 (files left by a version that created them world-readable)."""
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except FileNotFoundError:
        pass
