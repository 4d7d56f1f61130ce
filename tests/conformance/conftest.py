"""Which LayerView implementations the conformance cases run against.

Each implementation is a class taking a scratch directory, with ``open(layer, opaque)`` returning
a LayerView of a built test layer and ``close()``. Adding the FUSE mount later means adding one
entry to IMPLEMENTATIONS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.metadata import OpaqueXattr
from tests.conformance.store_view import StoreLayerView
from tests.conformance.view import LayerView
from tests.support.layers import BuiltLayer, Item, build_layer


class StoreViews:
    """Views over one LMDB store in the test's scratch dir (several layers may share it)."""

    def __init__(self, scratch: Path) -> None:
        self.store = open_store(StoreOptions(str(scratch / "cache"), map_size=64 << 20))

    def open(self, layer: BuiltLayer, opaque: OpaqueXattr) -> LayerView:
        return StoreLayerView(self.store, layer.blob, layer.digest, opaque)

    def close(self) -> None:
        self.store.close()


IMPLEMENTATIONS = {"store": StoreViews}

MakeView = Callable[..., LayerView]


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_view(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeView]:
    """``make_view(items, chunk_size=..., prefetch=..., opaque=...)`` -> LayerView."""
    impl = IMPLEMENTATIONS[request.param](tmp_path)

    def make(items: list[Item], *, chunk_size: int = 4 << 20, prefetch: tuple[str, ...] = (),
             opaque: OpaqueXattr = OpaqueXattr.ALL) -> LayerView:
        return impl.open(build_layer(items, chunk_size=chunk_size, prefetch=prefetch), opaque)

    yield make
    impl.close()
