/* daemon/xattrless.c: GETXATTR and LISTXATTR of the nodes of layers without xattrs. */
#ifndef LAZYLAYER_XATTRLESS_H
#define LAZYLAYER_XATTRLESS_H
#define FUSE_USE_VERSION 32
#include <fuse3/fuse_lowlevel.h>
#include <linux/fuse.h>
#include <stdint.h>

/* Wrap ops->getxattr and ops->listxattr (called by fuse_session_new in dircache.c). */
void lazylayer_xattrless_install(struct fuse_lowlevel_ops *ops);
/* Whether the request is one the wrapped operations answer here (daemon/attrcache.c serves it
 * in its burst, without pyfuse3). */
int lazylayer_xattrless_takes(const struct fuse_in_header *in);
/* A layer none of whose nodes has an xattr (daemon/dircache.py `xattrless`); 0 if there was no room. */
int lazylayer_xattrless_add(uint32_t layer_id);

#endif
