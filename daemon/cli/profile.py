"""`lazylayer profile push|pull|show|rm REF`: learned access profiles of an image.

A profile lists the chunks an image read first when it ran, merged over runs (recorded by the
daemon, stored in the cache; see daemon/profiles.py). `push` stores this cache's profile of REF
in REF's registry as an OCI artifact referring to the image manifest (after asking a running
daemon to finish a recording under way), `pull` fetches the registry's into this cache, `show`
says what is in it and where it came from, `rm` forgets it here. Every daemon of a fleet then
replays it when it resolves the image (``prefetch.profiles = "local"`` after a pull, or
``"registry"`` to look it up by itself). REF names an image; `show` and `rm` also take a bare
``sha256:`` manifest digest, which needs no registry. The cache is the running daemon's (else
``cache.dir``, or ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import os
import re

from lazylayer.daemon.cli._image import registry_options
from lazylayer.daemon.cli.output import human_size, print_json, print_table
from lazylayer.daemon.control import add_client_arguments, call, client_run_dir, control_path
from lazylayer.shared.config import load_config
from lazylayer.shared.errors import NotFoundError
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.profiles import Profiles
from lazylayer.workers.profiles import pull_profile, push_profile
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.manifests import Manifest, parse_platform, resolve_manifest
from lazylayer.workers.registry.reference import parse_reference

HELP = "share learned access profiles: push, pull, show or rm the profile of an image"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("push", "pull", "show", "rm"), help="what to do")
    parser.add_argument("ref", metavar="REF", help="image reference (show and rm: or its manifest digest)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--platform", help="OS/ARCH[/VARIANT] of a multi-platform image (default: this host's)")
    parser.add_argument("--limit", type=int, default=20, help="show: chunks listed (default 20; 0: all)")
    parser.add_argument("--cache-dir", help="the cache holding profiles (default: the running daemon's, "
                        "else cache.dir)")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config or None).config
    daemon = client_run_dir(args)
    if not os.path.exists(control_path(daemon)):
        daemon = None
    if args.action == "push" and daemon is not None:
        # a recording under way is stored now, so the push includes it
        call(daemon, "profile_flush", {"ref": args.ref}, timeout=120.0)
    options = StoreOptions.from_config(config.cache, args.cache_dir or (
        call(daemon, "status")["cache_dir"] if daemon is not None else None))
    if args.action != "pull" and not os.path.exists(os.path.join(options.path, "data.mdb")):
        raise NotFoundError(f"no lazylayer cache at {options.path} (--cache-dir, or cache.dir in the config)")
    with open_store(options) as store:
        profiles = Profiles(store)
        if args.action in ("show", "rm") and _DIGEST.fullmatch(args.ref):
            manifest_digest, image = args.ref, None
        else:
            client = RegistryClient(registry_options(args.config or None))
            image = _image(client, args)
            manifest_digest = image.digest
        if args.action == "show":
            return _show(profiles, manifest_digest, args)
        if args.action == "rm":
            if not profiles.remove(manifest_digest):
                raise NotFoundError(f"no profile of {args.ref} ({manifest_digest}) in this cache")
            print(f"removed the profile of {manifest_digest}")
            return 0
        assert image is not None
        reference = parse_reference(args.ref)
        if args.action == "pull":
            profile, artifact = pull_profile(client, reference, manifest_digest, config.prefetch.profile_max_size)
            profiles.put(profile, f"registry {reference.name} ({artifact})")
            _said(args, {"manifest": manifest_digest, "artifact": artifact, "runs": profile.runs,
                         "chunks": len(profile.chunks)}, f"pulled the profile of {manifest_digest}: "
                  f"{profile.runs} run(s), {len(profile.chunks)} chunks ({artifact})")
            return 0
        stored = profiles.get(manifest_digest)
        if stored is None:
            raise NotFoundError(f"no profile of {args.ref} ({manifest_digest}) in this cache: run the image "
                                "through the daemon first (prefetch.profile_record = true), or pull one")
        artifact = push_profile(client, reference, image, stored.profile, config.prefetch.profile_max_size)
        _said(args, {"manifest": manifest_digest, "artifact": artifact, "runs": stored.profile.runs,
                     "chunks": len(stored.profile.chunks)}, f"pushed the profile of {manifest_digest}: "
              f"{stored.profile.runs} run(s), {len(stored.profile.chunks)} chunks as {artifact}")
        return 0


def _image(client: RegistryClient, args: argparse.Namespace) -> Manifest:
    manifest, _ = resolve_manifest(client, parse_reference(args.ref),
                                   parse_platform(args.platform) if args.platform else None)
    return manifest


def _said(args: argparse.Namespace, result: dict[str, object], line: str) -> None:
    if args.json:
        print_json(result)
    else:
        print(line)


def _show(profiles: Profiles, manifest_digest: str, args: argparse.Namespace) -> int:
    stored = profiles.get(manifest_digest)
    if stored is None:
        raise NotFoundError(f"no profile of {args.ref} ({manifest_digest}) in this cache")
    profile = stored.profile
    layers = profile.layers()
    if args.json:
        print_json({"manifest": profile.manifest, "source": stored.source, "updated": stored.updated,
                    "runs": profile.runs, "chunks": len(profile.chunks), "bytes": profile.total_bytes,
                    "layers": [{"digest": d, "chunks": len(profile.for_layer(d)),
                                "bytes": sum(c.size for c in profile.for_layer(d))} for d in layers],
                    "entries": [{"layer": c.layer, "node": c.node_id, "offset": c.chunk_offset, "size": c.size,
                                 "digest": c.digest, "seen": c.seen, "at_ms": c.at_ms} for c in profile.chunks]})
        return 0
    print(f"profile of {profile.manifest}: {profile.runs} run(s), {len(profile.chunks)} chunks, "
          f"{human_size(profile.total_bytes)} (uncompressed); from {stored.source}")
    print_table("layers", ["layer", "chunks", "size"],
                [[d, len(profile.for_layer(d)), human_size(sum(c.size for c in profile.for_layer(d)))]
                 for d in layers])
    shown = profile.chunks if args.limit <= 0 else profile.chunks[:args.limit]
    print_table(f"replay order ({len(shown)} of {len(profile.chunks)})",
                ["layer", "node", "offset", "size", "seen", "first read"],
                [[c.layer[:19], c.node_id, c.chunk_offset, human_size(c.size), f"{c.seen}/{profile.runs}",
                  f"{c.at_ms / 1000:.2f} s"] for c in shown])
    return 0
