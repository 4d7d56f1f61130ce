"""Fixtures for the fetch tests: one real registry per module, the default test image on it, and
a fault proxy in front of it (tests that use it start and end with it reset)."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.fetchstack import PushedImage, default_trees, push_image_trees
from tests.support.registry import RunningRegistry, registry  # noqa: F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def app_image(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    return push_image_trees(registry, "fetch/app", "v1", default_trees(tmp_path_factory.mktemp("trees")))


@pytest.fixture(scope="module")
def proxy_server(registry: RunningRegistry) -> Iterator[FaultProxy]:
    fault = FaultProxy(registry.host)
    yield fault
    fault.stop()


@pytest.fixture
def proxy(proxy_server: FaultProxy) -> Iterator[FaultProxy]:
    proxy_server.reset()
    yield proxy_server
    proxy_server.reset()
