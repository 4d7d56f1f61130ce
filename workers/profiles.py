"""Profiles in LMDB and in registries: the worker jobs that store them, and the OCI artifact form.

Jobs (the front never writes LMDB): `profile_record` merges one run the front recorded into the
stored profile of its image; `profile_fetch` looks a registry up for a profile of an image
manifest and stores it (``prefetch.profiles = "registry"``).

In a registry a profile is an OCI artifact: an image manifest with ``artifactType``
`PROFILE_MEDIA_TYPE`, the empty config, one layer (the profile document) and the image manifest
as its ``subject``. It is found through the referrers API (``GET /v2/NAME/referrers/DIGEST``)
or, where a registry lacks it (Debian's docker-registry 2.8 does), through the OCI 1.1 fallback
tag ``sha256-<hex of the manifest digest>``, an index of the referrers that whoever pushes keeps
up to date. What comes back is data from the network: every document is digest-checked, the
artifact must name our type and this subject, the profile is size-capped and validated
(shared/store/profiles.py), and its chunks are later checked against the TOC by the replaying
front.
"""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

from lazylayer.shared.errors import FormatError, NotFoundError, ProtocolError
from lazylayer.shared.store.profiles import DEFAULT_MAX_BYTES, PROFILE_MEDIA_TYPE, Profile, Profiles
from lazylayer.workers.jobs import Handler, Job, JobResult
from lazylayer.workers.registry.client import MAX_DOCUMENT_SIZE, RegistryClient, sha256_digest
from lazylayer.workers.registry.manifests import OCI_INDEX, OCI_MANIFEST, Manifest
from lazylayer.workers.registry.push import push_blob, push_manifest
from lazylayer.workers.registry.reference import Reference, parse_reference

if TYPE_CHECKING:
    from lazylayer.workers.fetcher import Fetcher

log = logging.getLogger(__name__)

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
#: statuses of a registry without the referrers API (docker-registry 2.8 answers 404)
_NO_REFERRERS_API = (400, 404, 405, 501)


def fallback_tag(manifest_digest: str) -> str:
    """The OCI 1.1 referrers tag schema: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    return manifest_digest.replace(":", "-", 1)


def push_profile(client: RegistryClient, ref: Reference, image: Manifest, profile: Profile,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Push ``profile`` as an artifact whose subject is ``image`` and list it in the fallback
    tag's index (replacing an earlier lazylayer profile there, keeping other referrers);
    returns the artifact manifest's digest. A document above ``max_bytes`` is refused: the
    daemons pulling it would refuse it."""
    if profile.manifest != image.digest:
        raise FormatError(f"the profile is of image manifest {profile.manifest}, not {image.digest}")
    document = profile.to_json()
    if len(document) > max_bytes:
        raise FormatError(f"the profile is {len(document)} bytes, more than the {max_bytes}-byte limit "
                          "(prefetch.profile_max_size) daemons accept")
    config_digest, document_digest = sha256_digest(EMPTY_CONFIG), sha256_digest(document)
    push_blob(client, ref, config_digest, len(EMPTY_CONFIG), io.BytesIO(EMPTY_CONFIG), chunk_size=None)
    push_blob(client, ref, document_digest, len(document), io.BytesIO(document), chunk_size=None)
    artifact = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": PROFILE_MEDIA_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config_digest, "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": PROFILE_MEDIA_TYPE, "digest": document_digest, "size": len(document)}],
        "subject": {"mediaType": image.media_type, "digest": image.digest, "size": len(image.raw)},
        "annotations": {"vnd.lazylayer.profile.runs": str(profile.runs),
                        "vnd.lazylayer.profile.chunks": str(len(profile.chunks))},
    }, separators=(",", ":")).encode()
    digest = push_manifest(client, ref, artifact, OCI_MANIFEST, sha256_digest(artifact))
    others = [d for d in _fallback_index(client, ref, image.digest) if d.get("artifactType") != PROFILE_MEDIA_TYPE]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": others + [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(artifact), "artifactType": PROFILE_MEDIA_TYPE}]},
        separators=(",", ":")).encode()
    push_manifest(client, ref, index, OCI_INDEX, fallback_tag(image.digest))
    log.info("profile of %s pushed to %s as %s", image.digest, ref.name, digest)
    return digest


def pull_profile(client: RegistryClient, ref: Reference, manifest_digest: str,
                 max_bytes: int) -> tuple[Profile, str]:
    """The registry's profile of image manifest ``manifest_digest`` and its artifact digest;
    NotFoundError when there is none, FormatError when what is there is not acceptable."""
    descriptors = [d for d in _referrers(client, ref, manifest_digest) if d.get("artifactType") == PROFILE_MEDIA_TYPE]
    if not descriptors:
        raise NotFoundError(f"no lazylayer profile refers to image manifest {manifest_digest} in {ref.name}")
    artifact_digest = str(descriptors[-1].get("digest", ""))  # the newest entry
    what = f"profile artifact {artifact_digest} of {ref.name}"
    raw, _ = client.get_document(ref, f"manifests/{artifact_digest}", OCI_MANIFEST, what, artifact_digest)
    artifact = _json_object(raw, what)
    subject = artifact.get("subject")
    if artifact.get("artifactType") != PROFILE_MEDIA_TYPE or not isinstance(subject, dict):
        raise FormatError(f"{what} is not a lazylayer profile artifact")
    if subject.get("digest") != manifest_digest:
        raise FormatError(f"{what} refers to {subject.get('digest')!r:.80}, not to image manifest {manifest_digest}")
    layers = artifact.get("layers")
    if (not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict)
            or layers[0].get("mediaType") != PROFILE_MEDIA_TYPE):
        raise FormatError(f"{what} does not hold exactly one {PROFILE_MEDIA_TYPE} document")
    size, digest = layers[0].get("size"), layers[0].get("digest")
    if not isinstance(size, int) or not isinstance(digest, str):
        raise FormatError(f"{what}: its document descriptor lacks a size or digest")
    if size > max_bytes:
        raise FormatError(f"{what}: the profile is {size} bytes, more than the {max_bytes}-byte limit "
                          "(prefetch.profile_max_size)")
    document, _ = client.get_document(ref, f"blobs/{digest}", None, f"profile document {digest} of {ref.name}",
                                      digest)
    return Profile.from_json(document, max_bytes=max_bytes, manifest=manifest_digest), artifact_digest


def _referrers(client: RegistryClient, ref: Reference, manifest_digest: str) -> list[dict[str, Any]]:
    """Referrer descriptors of a manifest: the referrers API, else the fallback tag's index."""
    what = f"referrers of {manifest_digest} in {ref.name}"
    response, _ = client.api("GET", ref, f"referrers/{manifest_digest}", ok=(200, *_NO_REFERRERS_API),
                             params={"artifactType": PROFILE_MEDIA_TYPE}, headers={"Accept": OCI_INDEX}, what=what)
    if response.status_code != 200:
        response.close()
        return _fallback_index(client, ref, manifest_digest)
    return _manifests_of(_json_object(client.read_body(response, MAX_DOCUMENT_SIZE, what), what), what)


def _fallback_index(client: RegistryClient, ref: Reference, manifest_digest: str) -> list[dict[str, Any]]:
    tag = fallback_tag(manifest_digest)
    what = f"referrers tag {tag} of {ref.name}"
    try:
        raw, _ = client.get_document(ref, f"manifests/{tag}", OCI_INDEX, what, None)
    except NotFoundError:
        return []
    return _manifests_of(_json_object(raw, what), what)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FormatError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{what} is not a JSON object")
    return doc


def _manifests_of(index: dict[str, Any], what: str) -> list[dict[str, Any]]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
        raise FormatError(f"{what} is not an index of descriptors")
    return manifests


class ProfileJobs:
    """The profile job handlers; ``store`` and ``client`` are the Fetcher's per-process ones."""

    def __init__(self, fetcher: "Fetcher") -> None:
        self.fetcher = fetcher

    def handlers(self) -> dict[str, Handler]:
        return {"profile_record": self.profile_record, "profile_fetch": self.profile_fetch}

    def profile_record(self, job: Job) -> JobResult:
        """Merge one recorded run (payload: its profile document) into the stored profile."""
        manifest = job.params.get("manifest")
        if not isinstance(manifest, str) or len(job.payloads) != 1:
            raise ProtocolError("profile_record needs the manifest digest and one profile document")
        raw = bytes(job.payloads[0])
        run = Profile.from_json(raw, max_bytes=len(raw), manifest=manifest)
        if run.runs != 1:
            raise ProtocolError(f"profile_record got {run.runs} runs; the front records one at a time")
        stored = Profiles(self.fetcher.store()).merge_run(run)
        return JobResult({"runs": stored.profile.runs, "chunks": len(stored.profile.chunks)})

    def profile_fetch(self, job: Job) -> JobResult:
        """Look the registry up for a profile of the manifest and store it; found or not."""
        ref, manifest = job.params.get("ref"), job.params.get("manifest")
        max_bytes = job.params.get("max_bytes")
        if not isinstance(ref, str) or not isinstance(manifest, str) or not isinstance(max_bytes, int):
            raise ProtocolError("profile_fetch needs ref, manifest and max_bytes")
        reference = parse_reference(ref)
        try:
            profile, artifact = pull_profile(self.fetcher.client(reference), reference, manifest, max_bytes)
        except NotFoundError:
            return JobResult({"found": False})
        Profiles(self.fetcher.store()).put(profile, f"registry {reference.name} ({artifact})")
        log.info("profile of %s fetched from %s: %d runs, %d chunks", manifest, reference.name, profile.runs,
                 len(profile.chunks))
        return JobResult({"found": True, "chunks": len(profile.chunks)})
