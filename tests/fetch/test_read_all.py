"""Done-criterion of the workers issue: a Python client without FUSE resolves an image on the
test registry and reads every file's exact bytes through pool + workers + cache."""

from __future__ import annotations

import os
import stat

import trio

from lazylayer.shared.store.layers import LayerState
from lazylayer.shared.store.metadata import Metadata
from tests.ipc.harness import trio_test
from tests.support.fetchstack import expected_files, open_fetch_stack, read_path


@trio_test
async def test_every_file_of_every_layer_reads_back_exactly(app_image, tmp_path):
    async with open_fetch_stack(tmp_path, workers=2) as s:
        with trio.fail_after(60):
            image = await s.remote.resolve_image(app_image.ref)
            assert image.manifest_digest == app_image.manifest_digest
            assert [l.digest for l in image.layers] == [l.digest for l in app_image.layers]
            assert [l.toc_digest for l in image.layers] == [l.toc_digest for l in app_image.layers]
            meta = Metadata(s.store)
            for layer, desc in zip(app_image.layers, image.layers):
                record = await s.remote.resolve_layer(image.ref, desc)
                assert record.verified and record.state is LayerState.REGISTERED
                files = expected_files(layer.root)
                assert files
                for path, data in files.items():
                    # Odd piece size: reads straddle chunk boundaries.
                    assert await read_path(s.remote, image.ref, record, path, piece=100_003) == data, path
                for path in layer.root.rglob("*"):
                    rel = str(path.relative_to(layer.root))
                    attr = meta.getattr(meta.resolve(record.root, rel))
                    if path.is_symlink():
                        assert stat.S_ISLNK(attr.mode) and attr.link_target == os.readlink(path)
                    elif path.is_file():
                        assert attr.nlink == os.stat(path).st_nlink
        # Each chunk was fetched once (a hardlink shares its target's node, hence its chunks).
        assert 0 < s.remote.stats.chunks == s.remote.chunks.stats().chunks
