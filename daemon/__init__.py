"""lazylayer front side: the FUSE filesystem, worker pool, control socket and CLI."""

from lazylayer.daemon import dircache

# Before any module of this package imports pyfuse3: extension modules are bound when they are
# imported (RTLD_NOW), and the library must be in the global scope by then (daemon/dircache.py).
dircache.load()
