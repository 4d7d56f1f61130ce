"""The layer descriptor annotations eStargz defines: what a converter writes into a manifest and
what the daemon and workers read back (a module of its own so the front need not import the
writer to know two names)."""

#: sha256 of the TOC JSON; the only thing that vouches for a TOC before its blob is checked whole
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
#: size of the uncompressed layer tar, in ASCII digits
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
