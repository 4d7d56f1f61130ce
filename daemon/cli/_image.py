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
from lazylayer.workers.registry.stores import LAYOUT_PREFIX
from lazylayer.workers.registry.reference import ReferenceError, parse_reference


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


def registry_options(config_path: str | None) -> RegistryOptions:
    return RegistryOptions.from_config(load_config(config_path).config.registry)
