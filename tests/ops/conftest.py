"""Fixtures for the operations tests: a registry per module with the default 3-layer image."""

from __future__ import annotations

import pytest

from tests.support.fetchstack import PushedImage, default_trees, push_image_trees
from tests.support.registry import RunningRegistry, registry  # noqa: F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def ops_image(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    return push_image_trees(registry, "ops/app", "v1", default_trees(tmp_path_factory.mktemp("trees")))
