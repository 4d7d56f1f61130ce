"""Fixtures for the fetch tests: one real registry per module and the default test image on it."""

from __future__ import annotations

import pytest

from tests.support.fetchstack import PushedImage, default_trees, push_image_trees
from tests.support.registry import RunningRegistry, registry  # noqa: F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def app_image(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    return push_image_trees(registry, "fetch/app", "v1", default_trees(tmp_path_factory.mktemp("trees")))
