"""lazylayer front side: the FUSE filesystem, worker pool, control socket and CLI."""
