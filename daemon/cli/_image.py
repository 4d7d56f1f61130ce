"""What the image-level forms of `convert` and `inspect` share: telling an image from a path,
and the registry settings from the config file.

An argument is an image when it is `oci:PATH[:TAG]`, or when it is not an existing path and
looks unmistakably like a reference: a registry host first (`host.tld/`, `host:port/`,
`localhost/`), or a tag or digest (`name:tag`, `name@sha256:...`). A bare `foo/bar` that does not
exist stays a missing path, so a typo gets "no such file" rather than a Docker Hub lookup.
"""

from __future__ import annotations

import os

from lazylayer.shared.config import load_config
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.reference import (LAYOUT_PREFIX, LayoutRef, ReferenceError, parse_layout_ref,
                                                  parse_reference)


def is_image_spec(text: str) -> bool:
    if text.startswith(LAYOUT_PREFIX):
        return True
    if text == "-" or os.path.exists(text):
        return False
    try:
        parse_reference(text)
    except ReferenceError:
        return False
    first, slash, _ = text.partition("/")
    has_host = bool(slash) and ("." in first or ":" in first or first == "localhost" or first.startswith("["))
    last = text.rsplit("/", 1)[-1]
    return has_host or "@" in text or ":" in last


def daemon_ref(text: str) -> str:
    """The ref as the daemon must get it: an `oci:` layout path made absolute (the daemon and its
    workers do not run in our directory), anything else as typed. The layer store then names it
    `MNT/<base64("oci:/abs/path[:tag]")>/`."""
    if not text.startswith(LAYOUT_PREFIX):
        return text
    layout = parse_layout_ref(text)
    return str(LayoutRef(os.path.abspath(layout.path), layout.tag))


def registry_options(config_path: str | None) -> RegistryOptions:
    return RegistryOptions.from_config(load_config(config_path).config.registry)
