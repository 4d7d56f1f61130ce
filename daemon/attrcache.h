/* daemon/attrcache.c: GETATTR of layer nodes answered from the replies pyfuse3 already sent. */
#ifndef LAZYLAYER_ATTRCACHE_H
#define LAZYLAYER_ATTRCACHE_H
#define FUSE_USE_VERSION 32
#include <fuse3/fuse_lowlevel.h>

/* Wrap ops->getattr (called by fuse_session_new in dircache.c, before libfuse copies ops). */
void lazylayer_attrcache_install(struct fuse_lowlevel_ops *ops);

#endif
