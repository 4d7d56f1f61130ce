#ifndef LAZYLAYER_VIEWCONN_H
#define LAZYLAYER_VIEWCONN_H
#include <fuse3/fuse_lowlevel.h>
#include <stddef.h>
#include <stdint.h>

void lazylayer_viewconn_install(struct fuse_session *session);
int lazylayer_viewconn_serve(int fuse_fd, int session_fd);
int lazylayer_viewconn_attach(int fd, const void *init_request, size_t size, uint64_t root);
int lazylayer_viewconn_attached(void);

#endif
