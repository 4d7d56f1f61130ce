"""Registry fixtures for this area (the helpers live in tests/support so other areas reuse them)."""

from tests.support.registry import htpasswd_registry, registry, token_registry  # noqa: F401
