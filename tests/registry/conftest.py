"""Registry fixtures for this area (the helpers live in tests/support so other areas reuse them):
the registries, the team's fixture blob pushed once per module, and a fault proxy in front of the
open registry, reset around each test."""

import pytest

from tests.registry.helpers import push_fixture
from tests.support.faultproxy import FaultProxy
from tests.support.registry import htpasswd_registry, registry, token_registry  # noqa: F401


@pytest.fixture(scope="module")
def pushed(registry, fixtures_dir):  # noqa: F811
    return push_fixture(registry, fixtures_dir)


@pytest.fixture(scope="module")
def proxy_server(registry):  # noqa: F811
    server = FaultProxy(registry.host)
    yield server
    server.stop()


@pytest.fixture
def proxy(proxy_server):
    proxy_server.reset()
    yield proxy_server
    proxy_server.reset()
