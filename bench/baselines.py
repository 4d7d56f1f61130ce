"""What lazylayer is compared with: a full pull, and the physical limit of the cold path.

- Full pull = what `docker pull` + unpack does: fetch the manifest, then for each layer stream the
  blob (sha256-checked, as every pull client does) into GNU tar with gzip (C code, as fast as
  unpacking gets), onto the local disk. No fsync (a favour to the baseline).
- The limit = the compressed bytes of the data file fetched with ONE plain HTTP GET and
  decompressed as they arrive, in a tight loop, output thrown away: no per-chunk request, no
  hashing, no cache write, no FUSE. Nothing that fetches and decompresses these bytes can be
  faster on this machine.
"""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.errors import BenchError
from bench.images import OCI_MANIFEST, REPOSITORY, BenchImage
from bench.measure import MiB
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.workers.registry.blobsource import RegistryBlobSource
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.reference import parse_reference

PIECE = MiB


def _get(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.get(url, headers=headers or {}, stream=True, timeout=300)
    if response.status_code not in (200, 206):
        response.close()
        raise BenchError(f"GET {url}: HTTP {response.status_code}")
    return response


def blob_url(image: BenchImage, digest: str) -> str:
    return f"http://{image.registry_host}/v2/{REPOSITORY}/blobs/{digest}"


def full_pull(image: BenchImage, dest: Path) -> None:
    """Manifest, then every gzip layer streamed through sha256 into `tar -xz` under ``dest``
    (which must not exist: removing an earlier tree is not part of a pull)."""
    dest.mkdir(parents=True)
    manifest = requests.get(f"http://{image.registry_host}/v2/{REPOSITORY}/manifests/{image.gzip_manifest}",
                            timeout=60, headers={"Accept": OCI_MANIFEST})
    if manifest.status_code != 200:
        raise BenchError(f"manifest of {image.gzip_ref}: HTTP {manifest.status_code}")
    for layer in manifest.json()["layers"]:
        sha = hashlib.sha256()
        tar = subprocess.Popen(["tar", "-xzf", "-", "-C", str(dest)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert tar.stdin is not None
        with _get(blob_url(image, layer["digest"])) as response:
            while piece := response.raw.read(PIECE):
                sha.update(piece)
                tar.stdin.write(piece)
        tar.stdin.close()
        if tar.wait() != 0:
            raise BenchError(f"untar of {layer['digest']} failed: {tar.stderr.read().decode(errors='replace')[-300:]}")
        if "sha256:" + sha.hexdigest() != layer["digest"]:
            raise BenchError(f"layer {layer['digest']} arrived with another digest")


@dataclass(frozen=True)
class CompressedSpan:
    """Where the data file's gzip members sit in its eStargz layer blob: [start, end)."""

    digest: str
    start: int
    end: int


def data_span(image: BenchImage) -> CompressedSpan:
    """Read the data layer's footer and TOC (two ranged reads) to find the file's members."""
    layer = image.esgz_layers[-1]
    client = RegistryClient()
    try:
        reader = BlobReader.open(RegistryBlobSource(client, parse_reference(image.esgz_ref), layer.digest, layer.size))
    finally:
        client.close()
    chunks = reader.toc.chunks(image.data_path)
    if not chunks:
        raise BenchError(f"{image.data_path} is not in the last layer of {image.esgz_ref}")
    return CompressedSpan(layer.digest, chunks[0].blob_offset, chunks[-1].blob_end)


def get_and_gunzip(image: BenchImage, span: CompressedSpan) -> int:
    """The limit: one GET of the span, every gzip member inflated as the bytes arrive.
    Returns the decompressed byte count (checked by the caller against the file size)."""
    headers = {"Range": f"bytes={span.start}-{span.end - 1}"}
    total = 0
    inflate = zlib.decompressobj(31)
    with _get(blob_url(image, span.digest), headers) as response:
        while piece := response.raw.read(PIECE):
            while piece:
                total += len(inflate.decompress(piece))
                if inflate.eof:  # next gzip member (eStargz: one per chunk)
                    piece, inflate = inflate.unused_data, zlib.decompressobj(31)
                else:
                    piece = b""
    return total

