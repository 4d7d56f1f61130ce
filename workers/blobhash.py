"""A sha256 whose running state can leave the process: how background fetch checks a whole blob.

Background fetch walks a blob in bounded pieces, each one a separate job that any worker may run
(workers are stateless). The blob digest is sha256 over *all* the bytes in order, so the running
hash must travel from one piece to the next; hashlib cannot export its state, and a pure-Python
sha256 would take minutes per layer. OpenSSL's SHA256_CTX is a plain struct without pointers, so
its bytes are the state: the front carries them between pieces as an opaque token. The token is
only ever produced and consumed by this module on the same host's libcrypto; a round trip is
checked against hashlib once per process before any state is trusted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import threading

from lazylayer.shared.errors import WorkerError

#: sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len as 32-bit words.
STATE_SIZE = 112

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def _libcrypto() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            name = ctypes.util.find_library("crypto")
            if name is None:
                raise WorkerError("libcrypto (OpenSSL) not found: cannot check blob digests piecewise")
            lib = ctypes.CDLL(name)
            for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
                fn.restype = ctypes.c_int
            lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            _self_test(lib)
            _lib = lib
        return _lib


def _self_test(lib: ctypes.CDLL) -> None:
    data = bytes(range(256)) * 3
    half = PieceHash(None, lib).update(data[:300]).state()
    if PieceHash(half, lib).update(data[300:]).hexdigest() != hashlib.sha256(data).hexdigest():
        raise WorkerError("this libcrypto's SHA256_CTX does not round-trip; blob digests cannot be checked piecewise")


class PieceHash:
    """sha256 resumed from ``state`` (None: a fresh hash)."""

    def __init__(self, state: bytes | None = None, lib: ctypes.CDLL | None = None) -> None:
        self._lib = lib or _libcrypto()
        if state is None:
            self._ctx = ctypes.create_string_buffer(STATE_SIZE)
            self._lib.SHA256_Init(self._ctx)
        elif len(state) != STATE_SIZE:
            raise WorkerError(f"blob hash state of {len(state)} bytes; expected {STATE_SIZE}")
        else:
            self._ctx = ctypes.create_string_buffer(bytes(state), STATE_SIZE)

    def update(self, data: bytes) -> "PieceHash":
        self._lib.SHA256_Update(self._ctx, data, len(data))
        return self

    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctypes.create_string_buffer(self._ctx.raw, STATE_SIZE))
        return out.raw.hex()
