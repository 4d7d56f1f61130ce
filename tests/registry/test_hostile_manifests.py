"""Hostile descriptors are refused where they enter (the manifest parser), with the descriptor and
the field named: nothing downstream (the front's `info` file) turns them into a crash."""

from __future__ import annotations

import json

import pytest

from lazylayer.shared.errors import FormatError
from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from lazylayer.workers.registry.manifests import OCI_MANIFEST, parse_document

LAYER = "sha256:" + "ab" * 32


def manifest(size=10, annotations=None) -> bytes:
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": LAYER, "size": size}
    if annotations is not None:
        layer["annotations"] = annotations
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [layer],
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "cd" * 32, "size": 2}}).encode()


@pytest.mark.parametrize("value", ["²", " 12 ", "1_000", "-1", "+5", "", "12a", "١٢", "9" * 20])
def test_uncompressed_size_must_be_ascii_digits(value):
    with pytest.raises(FormatError, match=rf"descriptor {LAYER}: annotation {UNCOMPRESSED_SIZE_ANNOTATION} is "):
        parse_document(manifest(annotations={UNCOMPRESSED_SIZE_ANNOTATION: value}), OCI_MANIFEST, "sha256:" + "0" * 64)


def test_toc_digest_annotation_must_be_a_digest():
    with pytest.raises(FormatError, match=rf"annotation {TOC_DIGEST_ANNOTATION}: 'sha256:xyz' is not a sha256"):
        parse_document(manifest(annotations={TOC_DIGEST_ANNOTATION: "sha256:xyz"}), OCI_MANIFEST, "sha256:" + "0" * 64)


@pytest.mark.parametrize("size", [True, -1, 1 << 63, 1.5, "10"])
def test_descriptor_size_must_be_an_int64(size):
    with pytest.raises(FormatError, match="has a bad size or digest"):
        parse_document(manifest(size=size), OCI_MANIFEST, "sha256:" + "0" * 64)


def test_good_annotations_pass():
    doc = parse_document(manifest(annotations={UNCOMPRESSED_SIZE_ANNOTATION: "1234",
                                               TOC_DIGEST_ANNOTATION: "sha256:" + "ef" * 32}),
                         OCI_MANIFEST, "sha256:" + "0" * 64)
    assert doc.layers[0].annotations[UNCOMPRESSED_SIZE_ANNOTATION] == "1234"
