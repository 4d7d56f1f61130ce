"""LayerView over the LMDB store: metadata from LMDB, chunk data from the chunk store, misses
fetched from the local blob with BlobReader.read_chunk, stored, then read back from the store
(the same route a FUSE read takes, with the worker replaced by a local call)."""

from __future__ import annotations

import errno
import stat

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import NotFoundError
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import Chunk
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.env import Store
from lazylayer.shared.store.layers import LayerRecord, Layers
from lazylayer.shared.store.metadata import FileChunk, Metadata, NodeAttr, NodeRef, OpaqueXattr, visible_xattrs
from lazylayer.shared.store.reads import read_range
from tests.conformance.view import Stat


class CountingSource(BytesSource):
    """A blob in memory that counts reads, to tell cache hits from blob fetches."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read_at(self, offset: int, size: int) -> bytes:
        self.reads += 1
        return super().read_at(offset, size)


def to_toc_chunk(chunk: FileChunk) -> Chunk:
    return Chunk(chunk.chunk_offset, chunk.size, chunk.blob_offset, chunk.inner_offset,
                 chunk.blob_end, chunk.digest)


class StoreTreeView:
    """A tree in the store (a layer, or a merged view) rooted at ``root``; chunk misses are
    fetched from the blob reader of the layer the file belongs to."""

    def __init__(self, store: Store, root: NodeRef, readers: dict[int, BlobReader],
                 opaque: OpaqueXattr = OpaqueXattr.ALL) -> None:
        self.meta = Metadata(store)
        self.chunks = ChunkStore(store)
        self.root = root
        self.readers = readers
        self.opaque = opaque

    def _node(self, path: str) -> tuple[NodeRef, NodeAttr]:
        try:
            ref = self.meta.resolve(self.root, path)
        except NotFoundError:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
        attr = self.meta.getattr(ref)
        assert attr is not None, f"{path}: dirent without a node"
        return ref, attr

    def lstat(self, path: str) -> Stat:
        ref, a = self._node(path)
        return Stat(ref.inode, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.blocks, a.mtime)

    def _dir(self, path: str) -> list[tuple[bytes, NodeRef]]:
        ref, attr = self._node(path)
        if not attr.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return self.meta.readdir(ref)

    def listdir(self, path: str) -> list[str]:
        return [name.decode("utf-8", "surrogateescape") for name, _ in self._dir(path)]

    def dirent_inodes(self, path: str) -> dict[str, int]:
        return {name.decode("utf-8", "surrogateescape"): ref.inode for name, ref in self._dir(path)}

    def readlink(self, path: str) -> str:
        _, attr = self._node(path)
        if not stat.S_ISLNK(attr.mode):
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return attr.link_target

    def getxattr(self, path: str, name: str) -> bytes:
        _, attr = self._node(path)
        try:
            return visible_xattrs(attr, self.opaque)[name]
        except KeyError:
            raise OSError(errno.ENODATA, "No data available", path) from None

    def listxattr(self, path: str) -> list[str]:
        return list(visible_xattrs(self._node(path)[1], self.opaque))

    def read(self, path: str, offset: int, size: int) -> bytes:
        ref, attr = self._node(path)
        if attr.is_dir:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        result = read_range(self.meta, self.chunks, ref, attr.size, offset, size)
        if result.data is None:
            self.fetch(self.readers[ref.layer_id], result.missing)
            result = read_range(self.meta, self.chunks, ref, attr.size, offset, size)
            assert result.data is not None, "chunks stored but not readable"
        return result.data

    def fetch(self, reader: BlobReader, missing: tuple[FileChunk, ...] | list[FileChunk]) -> None:
        """What a worker does for a miss: decompress and verify, then put."""
        for chunk in missing:
            self.chunks.put(chunk.digest, reader.read_chunk(to_toc_chunk(chunk)))


class StoreLayerView(StoreTreeView):
    """One layer: registered from its blob (kept in memory, reads counted)."""

    def __init__(self, store: Store, blob: bytes, digest: str, opaque: OpaqueXattr = OpaqueXattr.ALL) -> None:
        self.source = CountingSource(blob)
        self.reader = BlobReader.open(self.source)
        self.record: LayerRecord = Layers(store).register(digest, len(blob), self.reader.toc, verified=True)
        super().__init__(store, self.record.root, {self.record.layer_id: self.reader}, opaque)

    def prefetch(self) -> int:
        """Cache the layer's prefetch range; returns how many chunks it covered."""
        end = self.record.prefetch_end or 0
        wanted = self.meta.prefetch_chunks(self.record.layer_id, end) if end else []
        self.fetch(self.reader, wanted)
        return len(wanted)
