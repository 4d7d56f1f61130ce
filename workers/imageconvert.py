"""Image-level convert and inspect: whole images in registries or OCI layouts.

`convert_image(SRC, DEST)` turns every gzip / uncompressed / zstd tar layer of an image into
eStargz, keeps layers that already are eStargz (their TOC digest checked) and copies anything
that is not a layer tar unchanged. Converted layers carry the TOC digest and uncompressed-size
annotations; the config's `rootfs.diff_ids` follow the new layers; the manifest (and, with
``all_platforms``, the index) is written to DEST. Layers shared by several platforms are
converted once.

`inspect_image(REF)` reports the resolved manifest(s) and, per layer, what its footer and TOC
say - reading only the tail and TOC ranges of each layer, never whole layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager

from lazylayer.shared.errors import (
    ConfigError, FormatError, LazyLayerError, NotEStargzError, NotFoundError, RegistryError,
)
from lazylayer.shared.blobsource import BlobSource
from lazylayer.shared.estargz.footer import MAX_FOOTER_SIZE, parse_footer
from lazylayer.shared.estargz.formats import BUILTIN, Decompressors
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.writer import (
    TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION, Progress, WriterOptions, convert_tar,
)
from lazylayer.workers.registry.auth import CredentialLookup
from lazylayer.workers.registry.client import RegistryClient, sha256_digest
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.manifests import (
    DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER_GZIP, TAR_LAYER_TYPES, Descriptor, Manifest,
    Platform, host_platform, parse_document, parse_platform,
)
from lazylayer.workers.registry.layout import OCILayout
from lazylayer.workers.registry.stores import ImageStore, RegistryStore, open_store
from lazylayer.workers.sources.base import LayerSpec
from lazylayer.workers.sources.urls import URLHandler

#: ``progress_factory(description, total_bytes_or_None)`` -> context manager yielding a Progress;
#: `lazylayer.daemon.cli.output.progress` fits.
ProgressFactory = Callable[[str, "int | None"], ContextManager[Progress]]
DEFAULT_TAG = "latest"


@dataclass
class LayerReport:
    source_digest: str
    digest: str
    media_type: str
    size: int
    #: "converted", "kept" (already eStargz) or "copied" (not a layer tar)
    action: str
    toc_digest: str | None = None
    diff_id: str | None = None


@dataclass
class ManifestReport:
    platform: str | None
    source_digest: str
    digest: str
    layers: list[LayerReport]


@dataclass
class ImageConvertResult:
    source: str
    destination: str
    #: digest and media type of what DEST now names (a manifest, or an index)
    digest: str
    media_type: str
    manifests: list[ManifestReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _NullProgress:
    def advance(self, amount: int) -> None:
        pass


def _no_progress(description: str, total: int | None) -> ContextManager[Progress]:
    return contextlib.nullcontext(_NullProgress())


def _platform(platform: str | Platform | None) -> Platform:
    if platform is None:
        return host_platform()
    return platform if isinstance(platform, Platform) else parse_platform(platform)


@contextlib.contextmanager
def _client(client: RegistryClient | None, options: RegistryOptions | None,
            credentials: CredentialLookup | None):
    if client is not None:
        yield client
        return
    own = RegistryClient(options, credentials)
    try:
        yield own
    finally:
        own.close()


def convert_image(src: str, dest: str, *, platform: str | Platform | None = None,
                  all_platforms: bool = False, options: WriterOptions = WriterOptions(),
                  progress_factory: ProgressFactory | None = None,
                  registry_options: RegistryOptions | None = None,
                  credentials: CredentialLookup | None = None,
                  client: RegistryClient | None = None) -> ImageConvertResult:
    """Convert image SRC into an eStargz image at DEST (image refs or `oci:PATH[:TAG]`).

    A multi-platform SRC yields the ``platform`` (default: this machine) manifest alone, or with
    ``all_platforms`` a converted index. DEST's tag defaults to `latest`; a DEST with a digest
    is refused (the result's digest cannot be known in advance).
    """
    with _client(client, registry_options, credentials) as http:
        source = open_store(src, http)
        target = open_store(dest, http, create=True)
        if isinstance(target, RegistryStore) and target.ref.digest:
            raise ConfigError(f"destination {dest} names a digest; give a tag instead")
        # A prefetch list names files of the whole image: each layer takes the ones it holds.
        layer_options = dataclasses.replace(options, prefetch_absent_ok=True)
        converter = _Converter(source, target, layer_options, progress_factory or _no_progress)
        raw, media_type, digest = source.resolve()
        top = parse_document(raw, media_type, digest)
        tag = target.tag or DEFAULT_TAG
        if isinstance(top, Manifest):
            report, out_raw = converter.manifest(top, None)
            out_digest = target.put_document(out_raw, top.media_type, tag)
            return ImageConvertResult(source.name, target.name, out_digest, top.media_type, [report])
        if not all_platforms:
            chosen = top.select(_platform(platform))
            report, out_raw = converter.manifest(converter.child(chosen), chosen.platform)
            out_digest = target.put_document(out_raw, chosen.media_type, tag)
            return ImageConvertResult(source.name, target.name, out_digest, chosen.media_type, [report])
        reports, entries = [], []
        for descriptor in top.manifests:
            report, out_raw = converter.manifest(converter.child(descriptor), descriptor.platform)
            target.put_document(out_raw, descriptor.media_type, None)
            reports.append(report)
            entries.append(Descriptor(descriptor.media_type, report.digest, len(out_raw), descriptor.annotations,
                                      descriptor.platform, descriptor.extra, descriptor.platform_extra).to_json())
        index_raw = json.dumps({**top.document, "manifests": entries}, indent=2).encode()
        out_digest = target.put_document(index_raw, top.media_type, tag)
        return ImageConvertResult(source.name, target.name, out_digest, top.media_type, reports)


class _Converter:
    def __init__(self, source: ImageStore, target: ImageStore, options: WriterOptions,
                 progress: ProgressFactory) -> None:
        self.source, self.target, self.options, self.progress = source, target, options, progress
        self._layers: dict[str, tuple[Descriptor, LayerReport]] = {}
        same_registry = (isinstance(source, RegistryStore) and isinstance(target, RegistryStore)
                         and source.ref.registry == target.ref.registry)
        self._mount_from = source.ref.repository if same_registry else None  # type: ignore[union-attr]

    def child(self, descriptor: Descriptor) -> Manifest:
        document = parse_document(self.source.document(descriptor.digest), descriptor.media_type, descriptor.digest)
        if not isinstance(document, Manifest):
            raise FormatError(f"{self.source.name}: index entry {descriptor.digest} is not an image manifest")
        return document

    def manifest(self, manifest: Manifest, platform: Platform | None) -> tuple[ManifestReport, bytes]:
        """Convert one image manifest: layers, then config, then the manifest bytes to write."""
        config_raw = self.source.blob_bytes(manifest.config.digest)
        try:
            config = json.loads(config_raw)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            config, diff_ids = None, None
        tar_layers = [l for l in manifest.layers if l.media_type in TAR_LAYER_TYPES]
        if tar_layers and (diff_ids is None or len(diff_ids) != len(manifest.layers)):
            raise FormatError(f"{self.source.name}: config {manifest.config.digest} has no rootfs.diff_ids "
                              f"matching the manifest's {len(manifest.layers)} layers")
        docker = manifest.media_type == DOCKER_MANIFEST
        layers, reports = [], []
        for number, layer in enumerate(manifest.layers, 1):
            label = f"layer {number}/{len(manifest.layers)} {layer.digest[7:19]}"
            descriptor, report = self._layer(layer, docker, label)
            if report.diff_id and diff_ids is not None:
                diff_ids[number - 1] = report.diff_id
            layers.append(descriptor)
            reports.append(report)
        config_descriptor = manifest.config
        if config is not None and diff_ids != config["rootfs"]["diff_ids"]:
            config["rootfs"]["diff_ids"] = diff_ids
            new_config = json.dumps(config, separators=(",", ":")).encode()
            config_descriptor = Descriptor(manifest.config.media_type, sha256_digest(new_config), len(new_config),
                                           manifest.config.annotations, None, manifest.config.extra)
            self._put_bytes(config_descriptor.digest, new_config)
        else:
            self._put_bytes(manifest.config.digest, config_raw)
        document = {**manifest.document, "config": config_descriptor.to_json(), "layers": [l.to_json() for l in layers]}
        raw = json.dumps(document, indent=2).encode()
        digest = sha256_digest(raw)
        return ManifestReport(str(platform) if platform else None, manifest.digest, digest, reports), raw

    def _layer(self, layer: Descriptor, docker: bool, label: str) -> tuple[Descriptor, LayerReport]:
        if layer.digest in self._layers:
            return self._layers[layer.digest]
        if layer.media_type not in TAR_LAYER_TYPES:
            self._copy(layer, label)
            done = layer, LayerReport(layer.digest, layer.digest, layer.media_type, layer.size, "copied")
        else:
            toc_digest = self._existing_toc_digest(layer)
            if toc_digest is not None:
                self._copy(layer, label)
                annotations = {**layer.annotations, TOC_DIGEST_ANNOTATION: toc_digest}
                kept = Descriptor(layer.media_type, layer.digest, layer.size, annotations, None, layer.extra)
                done = kept, LayerReport(layer.digest, layer.digest, layer.media_type, layer.size, "kept", toc_digest)
            else:
                done = self._convert(layer, docker, label)
        self._layers[layer.digest] = done
        return done

    def _existing_toc_digest(self, layer: Descriptor) -> str | None:
        """The TOC digest of a layer that already is eStargz (annotation checked), else None."""
        blob = self.source.blob_source(layer.digest, layer.size)
        tail = min(MAX_FOOTER_SIZE, layer.size)
        try:
            parse_footer(blob.read_at(layer.size - tail, tail), layer.size)
        except NotEStargzError:
            return None
        reader = BlobReader.open(blob, toc_digest=layer.annotations.get(TOC_DIGEST_ANNOTATION))
        return reader.toc_digest

    def _convert(self, layer: Descriptor, docker: bool, label: str) -> tuple[Descriptor, LayerReport]:
        with tempfile.TemporaryDirectory(prefix="lazylayer-imageconvert-") as work:
            pulled, written = os.path.join(work, "source"), os.path.join(work, "estargz")
            with open(pulled, "w+b") as f, self.progress(f"pull {label}", layer.size) as bar:
                self.source.download(layer.digest, f, bar.advance)
            with open(pulled, "rb") as src, open(written, "wb") as out, \
                    self.progress(f"convert {label}", None) as bar:
                result = convert_tar(src, out, self.options, bar)
            os.unlink(pulled)
            with open(written, "rb") as f, self.progress(f"push {label}", result.blob_size) as bar:
                self.target.put_blob(result.blob_digest, result.blob_size, f, progress=bar.advance)
        annotations = {k: v for k, v in layer.annotations.items()
                       if k not in (TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION)}
        annotations.update(result.annotations())
        media_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
        descriptor = Descriptor(media_type, result.blob_digest, result.blob_size, annotations, None, layer.extra)
        return descriptor, LayerReport(layer.digest, result.blob_digest, media_type, result.blob_size,
                                       "converted", result.toc_digest, result.diff_id)

    def _copy(self, layer: Descriptor, label: str) -> None:
        """Make DEST hold a blob of SRC unchanged (mounted when both are the same registry)."""
        if self.target.has_blob(layer.digest):
            return
        if isinstance(self.target, RegistryStore) and self._mount_from is not None:
            if self.target.mount_blob(layer.digest, self._mount_from):
                return
        with tempfile.TemporaryFile(prefix="lazylayer-copy-") as f:
            with self.progress(f"copy {label}", layer.size) as bar:
                self.source.download(layer.digest, f, bar.advance)
            f.seek(0)
            self.target.put_blob(layer.digest, layer.size, f)

    def _put_bytes(self, digest: str, data: bytes) -> None:
        with tempfile.TemporaryFile(prefix="lazylayer-config-") as f:
            f.write(data)
            f.seek(0)
            self.target.put_blob(digest, len(data), f)


def inspect_image(ref: str, *, platform: str | Platform | None = None, all_platforms: bool = False,
                  registry_options: RegistryOptions | None = None,
                  credentials: CredentialLookup | None = None,
                  client: RegistryClient | None = None,
                  decompressors: Decompressors | None = None) -> dict[str, Any]:
    """What an image is made of, per layer with its eStargz facts (tail and TOC reads only).

    Keys: ``reference``, ``digest`` and ``media_type`` of what REF names; ``index`` (list of
    ``{digest, media_type, size, platform}``, or None for a plain manifest); ``manifests``: the
    inspected manifest(s) - ``{digest, media_type, platform, config: {digest, size}, layers}``
    with each layer ``{digest, media_type, size, annotations, footer, toc_offset, toc_digest,
    toc_digest_annotation, toc_digest_matches, uncompressed_size_annotation, entries,
    prefetch_size, error, source, decompressor}``: ``source`` is where the layer was read
    (registry, oci-layout, or urls when the store has no copy of a non-distributable layer) and
    ``decompressor`` the format that claims it (None: none does).
    """
    with _client(client, registry_options, credentials) as http:
        store = open_store(ref, http)
        inspector = _LayerInspector(store, decompressors or Decompressors.load(),
                                    URLHandler(registry_options or RegistryOptions()))
        raw, media_type, digest = store.resolve()
        top = parse_document(raw, media_type, digest)
        report: dict[str, Any] = {"reference": store.name, "digest": digest, "media_type": top.media_type,
                                  "index": None, "manifests": []}
        if isinstance(top, Manifest):
            report["manifests"].append(_inspect_manifest(inspector, top, None))
            return report
        report["index"] = [{"digest": d.digest, "media_type": d.media_type, "size": d.size,
                            "platform": str(d.platform) if d.platform else None} for d in top.manifests]
        chosen = top.manifests if all_platforms else [top.select(_platform(platform))]
        for descriptor in chosen:
            document = parse_document(store.document(descriptor.digest), descriptor.media_type, descriptor.digest)
            if not isinstance(document, Manifest):
                raise FormatError(f"{store.name}: index entry {descriptor.digest} is not an image manifest")
            report["manifests"].append(_inspect_manifest(inspector, document, descriptor.platform))
        return report


def _inspect_manifest(inspector: "_LayerInspector", manifest: Manifest, platform: Platform | None) -> dict[str, Any]:
    return {
        "digest": manifest.digest, "media_type": manifest.media_type,
        "platform": str(platform) if platform else None,
        "config": {"digest": manifest.config.digest, "size": manifest.config.size},
        "layers": [inspector.layer(layer) for layer in manifest.layers],
    }


@dataclass
class _LayerInspector:
    store: ImageStore
    decompressors: Decompressors
    urls: URLHandler

    def source(self, layer: Descriptor) -> tuple[str, BlobSource]:
        """Where a layer is read: the image's own store, or the descriptor's urls when the store
        has no copy (a non-distributable layer)."""
        if layer.urls and not self.store.has_blob(layer.digest):
            found = self.urls.open(LayerSpec(self.store.name, layer.digest, layer.size, layer.media_type,
                                             layer.urls))
            if found is not None:
                return "urls", found
        kind = "oci-layout" if isinstance(self.store, OCILayout) else "registry"
        return kind, self.store.blob_source(layer.digest, layer.size)

    def layer(self, layer: Descriptor) -> dict[str, Any]:
        if layer.media_type not in TAR_LAYER_TYPES and not self.decompressors.plugins:
            return _inspect_layer(None, layer)
        source, blob = self.source(layer)
        try:
            decompressor, blob = self.decompressors.claim(blob, layer.media_type)
        except NotEStargzError:
            return _inspect_layer(None, layer) | {"source": source}
        facts = _inspect_layer(blob if decompressor in BUILTIN else None, layer)
        return facts | {"source": source, "decompressor": decompressor}


def _inspect_layer(blob: BlobSource | None, layer: Descriptor) -> dict[str, Any]:
    """The descriptor's facts, and the footer's and TOC's when ``blob`` is a built-in format's."""
    annotation = layer.annotations.get(TOC_DIGEST_ANNOTATION)
    facts: dict[str, Any] = {
        "digest": layer.digest, "media_type": layer.media_type, "size": layer.size,
        "annotations": dict(layer.annotations), "toc_digest_annotation": annotation,
        "uncompressed_size_annotation": layer.annotations.get(UNCOMPRESSED_SIZE_ANNOTATION),
        "footer": None, "toc_offset": None, "toc_digest": None, "toc_digest_matches": None,
        "entries": None, "prefetch_size": None, "error": None, "source": None, "decompressor": None,
    }
    if blob is None:
        return facts
    try:
        reader = BlobReader.open(blob)
    except NotEStargzError:
        return facts
    except (RegistryError, NotFoundError):
        raise
    except LazyLayerError as exc:  # a broken TOC is a fact about the layer, not a failure
        facts["error"] = str(exc)
        return facts
    facts.update({
        "footer": reader.footer.kind.value, "toc_offset": reader.footer.toc_offset,
        "toc_digest": reader.toc_digest, "entries": len(reader.toc.entries),
        "toc_digest_matches": None if annotation is None else annotation == reader.toc_digest,
        "prefetch_size": reader.prefetch_size(),
    })
    return facts
