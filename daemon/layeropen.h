/* daemon/layeropen.c: read-only OPEN of layer files, and their RELEASE. */
#ifndef LAZYLAYER_LAYEROPEN_H
#define LAZYLAYER_LAYEROPEN_H
#define FUSE_USE_VERSION 32
#include <fuse3/fuse_lowlevel.h>
#include <linux/fuse.h>

/* Wrap ops->open and ops->release (called by fuse_session_new in dircache.c). */
void lazylayer_layeropen_install(struct fuse_lowlevel_ops *ops);
/* Whether the request (of size bytes) is one the wrapped operations answer here
 * (daemon/attrcache.c then serves it in its burst, without pyfuse3). */
int lazylayer_layeropen_takes(const struct fuse_in_header *in, int size);

#endif
