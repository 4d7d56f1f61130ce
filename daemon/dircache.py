"""Directory listings the kernel keeps, where pyfuse3 has no way to ask for it.

Layers never change, so a listing read once could be served by the kernel from then on:
FOPEN_CACHE_DIR (plus FOPEN_KEEP_CACHE) in the reply to OPENDIR asks for that. pyfuse3 3.5
answers OPENDIR with the fh alone, so every `opendir` + `readdir` + `releasedir` of every
directory came to the front: a warm `find` over the bench image's rootfs layer was 7,643 FUSE
requests, five times a walk of the same tree on local disk.

The kernel has a second way in: a file system that answers OPENDIR with ENOSYS is never sent
OPENDIR or RELEASEDIR again on that connection, and every directory is opened
FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR (fs/fuse/file.c, "Default for no-open"). READDIR then
carries fh 0, and pyfuse3 passes its handler nothing else, so the library puts the inode there:
`LazyFS.readdir` takes its fh as the directory's inode, which `LazyFS.opendir` also returns.
What the store layout lists does change (a new ref, a layer held): daemon/held.py gives those
directories an mtime that moves with them and drops their cached attributes, and the kernel
empties a kept listing whose directory's mtime changed (auto_inval_data, libfuse's default).

Reading a listing through FUSE also makes the kernel forget the directory's atime (fs/fuse
readdir.c; only a read-only superblock is spared, and the store takes `use` and `rmdir`), so the
next stat of each directory is a GETATTR: 2,904 of them in a `find` of the bench image just after
a cold one, about 100 us each through pyfuse3 and trio, the walk 2.2x a local disk's. Merged views
now have a read-only connection of their own (daemon/viewconn.py, whose io is in this library too).
daemon/attrcache.c, in the same library, answers a layer node's GETATTR from the attributes pyfuse3
last replied for it, within the timeout the kernel was given, before pyfuse3 learns a request came;
daemon/xattrless.c answers the xattr requests (overlayfs's, mostly) of layers without xattrs, and
daemon/layeropen.c the read-only opens of layer files.

How: daemon/dircache.c defines libfuse's `fuse_session_new`. The package's __init__ loads
it RTLD_GLOBAL before anything imports pyfuse3, whose references are bound at import to the
first definition in the global scope; it hands libfuse pyfuse3's operations with OPENDIR and
READDIR(PLUS) wrapped. Without the library (not built, or a libfuse whose session constructor is
another symbol), or on a kernel whose FUSE_INIT does not offer zero-message opendirs (before
5.1), the front works as before, every listing through FUSE; the daemon logs a warning and
`lazylayer status` says so.
"""

from __future__ import annotations

import ctypes
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

_library: ctypes.CDLL | None = None
#: why `load` found no library: said by the front (`problem`), not by every command that loads it
_missing = "daemon/dircache.py's library is not loaded"


def load() -> None:
    """Load the library into the global symbol scope; it counts only before pyfuse3 is imported.
    A missing or unloadable library costs the caching, nothing else (`problem` says so)."""
    global _library, _missing
    if _library is not None:
        return
    here = Path(__file__).parent
    for suffix in EXTENSION_SUFFIXES:
        path = here / f"_dircache{suffix}"
        if path.exists():
            try:
                _library = ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
            except OSError as exc:
                _missing = f"cannot load {path}: {exc}"
            return
    _missing = f"{here}/_dircache*.so is not built (pip install builds it)"


def library() -> ctypes.CDLL | None:
    """The loaded library (daemon/viewconn.py calls into it), or None."""
    return _library


def serve(fuse_fd: int, session_fd: int) -> bool:
    """Make ``session_fd`` (what pyfuse3 waits on) the set of this process's FUSE connections,
    the store's ``fuse_fd`` first (daemon/viewconn.c); False without the library's io, and the
    caller puts ``fuse_fd`` there itself."""
    return _library is not None and _library.lazylayer_viewconn_serve(fuse_fd, session_fd) == 0


def problem() -> str | None:
    """Why the kernel does not keep this process's listings, or None when it does (a kernel's
    answer is assumed until its FUSE_INIT)."""
    if _library is None:
        return _missing
    if ctypes.c_int.in_dll(_library, "lazylayer_dircache_sessions").value == 0:
        return "daemon/dircache.py's library did not start this FUSE session"
    if ctypes.c_int.in_dll(_library, "lazylayer_dircache_zero_opendir").value == 0:
        return "this kernel does not take ENOSYS for OPENDIR (Linux 5.1 and later do)"
    return None


def attr_hits() -> int:
    """GETATTRs daemon/attrcache.c answered without pyfuse3 (0 without the library)."""
    if _library is None:
        return 0
    return ctypes.c_ulonglong.in_dll(_library, "lazylayer_attrcache_hits").value


def xattrless(layer_id: int) -> None:
    """Layer ``layer_id`` has no node with an xattr: daemon/xattrless.c answers its nodes' xattr
    requests from now on (without the library they keep coming to `LazyFS`)."""
    if _library is not None:
        _library.lazylayer_xattrless_add(ctypes.c_uint32(layer_id))


def xattr_hits() -> int:
    """GETXATTRs and LISTXATTRs daemon/xattrless.c answered without pyfuse3 (0 without the library)."""
    if _library is None:
        return 0
    return ctypes.c_ulonglong.in_dll(_library, "lazylayer_xattrless_hits").value


def open_hits() -> int:
    """Opens of layer files daemon/layeropen.c answered without pyfuse3 (0 without the library)."""
    if _library is None:
        return 0
    return ctypes.c_ulonglong.in_dll(_library, "lazylayer_layeropen_hits").value


def burst_ended_flag() -> ctypes.c_int | None:
    """daemon/attrcache.c's flag for "a burst of GETATTRs served in C ended" (None without the
    library): daemon/fusedispatch.py clears it and lets trio's other tasks run."""
    if _library is None:
        return None
    return ctypes.c_int.in_dll(_library, "lazylayer_attrcache_burst_ended")


def status() -> dict[str, Any]:
    """For `lazylayer status`."""
    why = problem()
    return {"active": why is None, "problem": why, "attr_hits": attr_hits(), "xattr_hits": xattr_hits(),
            "open_hits": open_hits()}
