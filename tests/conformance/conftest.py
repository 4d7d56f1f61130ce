"""Which LayerView implementations the conformance cases run against.

Each implementation is a class taking a scratch directory, with ``open(layer, opaque)`` returning
a LayerView of a built test layer, ``open_image(layers)`` returning the merged view of a stack
(bottom -> top), and ``close()``. Adding the FUSE mount later means adding one
entry to IMPLEMENTATIONS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.metadata import OpaqueXattr
from lazylayer.shared.store.merged import MergedViews
from tests.conformance.fuse_view import FuseViews
from tests.conformance.store_view import StoreLayerView, StoreTreeView
from tests.conformance.view import LayerView
from tests.support.layers import BuiltLayer, Item, build_layer


class StoreViews:
    """Views over one LMDB store in the test's scratch dir (several layers may share it)."""

    def __init__(self, scratch: Path) -> None:
        self.store = open_store(StoreOptions(str(scratch / "cache"), map_size=64 << 20))

    def open(self, layer: BuiltLayer, opaque: OpaqueXattr) -> LayerView:
        return StoreLayerView(self.store, layer.blob, layer.digest, opaque)

    def open_image(self, layers: list[BuiltLayer]) -> LayerView:
        """The merged view of ``layers`` (bottom -> top)."""
        views = [StoreLayerView(self.store, layer.blob, layer.digest) for layer in layers]
        image = MergedViews(self.store).create([layer.digest for layer in layers])
        readers = {view.record.layer_id: view.reader for view in views}
        return StoreTreeView(self.store, image.root, readers)

    def close(self) -> None:
        self.store.close()


IMPLEMENTATIONS = {"store": StoreViews, "fuse": FuseViews}

MakeView = Callable[..., LayerView]


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreViews]:
    impl = IMPLEMENTATIONS[request.param](tmp_path)
    yield impl
    impl.close()


@pytest.fixture
def make_view(implementation: StoreViews) -> MakeView:
    """``make_view(items, chunk_size=..., prefetch=..., opaque=...)`` -> LayerView."""

    def make(items: list[Item], *, chunk_size: int = 4 << 20, prefetch: tuple[str, ...] = (),
             opaque: OpaqueXattr = OpaqueXattr.ALL) -> LayerView:
        return implementation.open(build_layer(items, chunk_size=chunk_size, prefetch=prefetch), opaque)

    return make


@pytest.fixture
def make_image(implementation: StoreViews) -> Callable[[list[list[Item]]], LayerView]:
    """``make_image([bottom_items, ..., top_items])`` -> the merged LayerView."""
    return lambda stack: implementation.open_image([build_layer(items) for items in stack])
