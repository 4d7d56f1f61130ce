"""OCI image layout directories (`oci:PATH[:TAG]`) as an image store.

Layout (image-spec `image-layout.md`): `oci-layout` ({"imageLayoutVersion": "1.0.0"}),
`index.json` (an OCI index whose entries name images by the `org.opencontainers.image.ref.name`
annotation) and `blobs/<alg>/<hex>`. Blobs are written to a temporary file, verified, then
renamed into place, so a layout never holds a blob that does not match its name; index.json is
replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from lazylayer.shared.blobsource import FileSource
from lazylayer.shared.errors import DigestMismatchError, FormatError, NotFoundError
from lazylayer.workers.registry.client import Progress, sha256_digest
from lazylayer.workers.registry.manifests import OCI_INDEX

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"(sha256):([a-f0-9]{64})|(sha512):([a-f0-9]{128})")
_COPY_PIECE = 1 << 20


class OCILayout:
    """One layout directory; ``tag`` selects an image by its ref.name (None: the only one, or
    index.json itself as an index when it lists several images)."""

    def __init__(self, path: str | os.PathLike[str], tag: str | None = None, *, create: bool = False) -> None:
        self.path = Path(path)
        self.tag = tag
        if create and not (self.path / "oci-layout").exists():
            (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
            self._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        if not (self.path / "oci-layout").is_file():
            raise NotFoundError(f"{self.path}: not an OCI image layout (no oci-layout file)")

    @property
    def name(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")

    # ---- reading ------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        match = _DIGEST.fullmatch(digest)
        if not match:
            raise FormatError(f"{self.name}: {digest!r} is not a sha256/sha512 digest")
        algorithm, hexdigest = digest.split(":")
        return self.path / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def index(self) -> dict:
        try:
            data = json.loads((self.path / "index.json").read_text())
        except (OSError, ValueError) as exc:
            raise FormatError(f"{self.name}: unreadable index.json ({type(exc).__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("manifests"), list):
            raise FormatError(f"{self.name}: index.json has no manifests list")
        return data

    def resolve(self) -> tuple[bytes, str | None, str]:
        """The top-level document: (bytes, media type, digest)."""
        index = self.index()
        entries = index["manifests"]
        if self.tag is not None:
            chosen = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME_ANNOTATION) == self.tag]
            if not chosen:
                raise NotFoundError(f"{self.name}: no image tagged {self.tag!r} in index.json")
        elif len(entries) == 1:
            chosen = entries
        else:
            raw = (self.path / "index.json").read_bytes()
            return raw, OCI_INDEX, sha256_digest(raw)
        entry = chosen[-1]
        return self.blob_bytes(entry["digest"]), entry.get("mediaType"), entry["digest"]

    def document(self, digest: str) -> bytes:
        return self.blob_bytes(digest)

    def blob_bytes(self, digest: str, limit: int = 64 << 20) -> bytes:
        path = self.blob_path(digest)
        try:
            if path.stat().st_size > limit:
                raise FormatError(f"{self.name}: blob {digest} is larger than {limit} bytes")
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}: blob {digest} is missing") from None
        actual = "sha256:" + hashlib.sha256(data).hexdigest() if digest.startswith("sha256:") else \
            "sha512:" + hashlib.sha512(data).hexdigest()
        if actual != digest:
            raise DigestMismatchError(f"{self.name}: blob", digest, actual)
        return data

    def blob_source(self, digest: str, size: int | None = None) -> FileSource:
        path = self.blob_path(digest)
        if not path.is_file():
            raise NotFoundError(f"{self.name}: blob {digest} is missing")
        return FileSource(path)

    def download(self, digest: str, out: BinaryIO, progress: Progress | None = None) -> int:
        """Copy the blob to ``out``, verified (``out`` is truncated back on a mismatch)."""
        start = out.tell()
        hasher = hashlib.new(digest.split(":")[0])
        total = 0
        try:
            with open(self.blob_path(digest), "rb") as f:
                while piece := f.read(_COPY_PIECE):
                    hasher.update(piece)
                    out.write(piece)
                    total += len(piece)
                    if progress:
                        progress(len(piece))
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}: blob {digest} is missing") from None
        actual = f"{digest.split(':')[0]}:{hasher.hexdigest()}"
        if actual != digest:
            out.seek(start)
            out.truncate()
            raise DigestMismatchError(f"{self.name}: blob", digest, actual)
        return total

    # ---- writing ------------------------------------------------------------------------

    def put_blob(self, digest: str, size: int, data: BinaryIO, *, progress: Progress | None = None) -> bool:
        """Store ``size`` bytes of ``data`` as ``digest``; False when it was already there."""
        target = self.blob_path(digest)
        if target.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.new(digest.split(":")[0])
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                left = size
                while left:
                    piece = data.read(min(_COPY_PIECE, left))
                    if not piece:
                        raise FormatError(f"{self.name}: blob {digest} source ended {left} bytes early")
                    hasher.update(piece)
                    out.write(piece)
                    left -= len(piece)
                    if progress:
                        progress(len(piece))
            actual = f"{digest.split(':')[0]}:{hasher.hexdigest()}"
            if actual != digest:
                raise DigestMismatchError(f"{self.name}: blob being written", digest, actual)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return True

    def put_document(self, raw: bytes, media_type: str, tag: str | None,
                     platform: dict | None = None) -> str:
        """Store a manifest or index; with ``tag``, also name it in index.json (replacing the
        previous image of that name)."""
        digest = sha256_digest(raw)
        with tempfile.TemporaryFile() as f:
            f.write(raw)
            f.seek(0)
            self.put_blob(digest, len(raw), f)
        if tag is not None:
            index = self.index()
            entry: dict = {"mediaType": media_type, "digest": digest, "size": len(raw),
                           "annotations": {REF_NAME_ANNOTATION: tag}}
            if platform:
                entry["platform"] = platform
            index["manifests"] = [e for e in index["manifests"]
                                  if (e.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag] + [entry]
            self._write_index(index)
        return digest

    def _write_index(self, index: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".index-")
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=2)
        os.replace(tmp, self.path / "index.json")
