/* The merged views' own FUSE connection, served by the one pyfuse3 session (loaded with
 * daemon/dircache.c; why: see daemon/viewconn.py).
 *
 * libfuse reads and writes the session's requests through the custom io set here. The session's
 * fd (the number pyfuse3 waits on) becomes an epoll set over the store's /dev/fuse fd and, once
 * attached, the views' one; a read takes a request from whichever is ready. A request of the
 * views' connection is marked in its unique (bit 62: the kernel's counter steps by 2 and never
 * gets there; bit 63 is the kernel's own mark of a request sent again, FUSE_UNIQUE_RESEND, which
 * a store request carries after a takeover) and its root (nodeid 1) is renamed the .images
 * directory's inode, so pyfuse3 and LazyFS serve it like any other; a reply whose unique is
 * marked goes back to the views' fd. Notifications go to the store, and a copy (the .images
 * inode named 1) to the views. Before the store's INIT (which daemon/fuseconn.py feeds in on
 * a socket) reads and writes go to the fd libfuse names; the INIT reply is kept, to answer the
 * views' INIT with.
 */
#define FUSE_USE_VERSION 32
#include <fuse3/fuse_lowlevel.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include "viewconn.h"

#define VIEW_MARK (1ULL << 62)
#define INIT_REPLY_MAX 512

static int store_fd = -1;
static int views_fd = -1;
static int epoll_fd = -1;
static uint64_t views_root;
static uint64_t store_init_unique;
static unsigned char init_reply[INIT_REPLY_MAX];
static size_t init_reply_len;
static int views_turn;
static int installed; /* whether libfuse reads and writes through the io below */

/* Requests of the views' connection taken so far: daemon/viewconn.py reads it for status. */
unsigned long long lazylayer_viewconn_requests;

static void views_gone(void)
{
    if (views_fd >= 0) {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, views_fd, NULL);
        views_fd = -1; /* the fd itself is daemon/viewconn.py's (and the holder's) to close */
    }
}

/* A request read from the views' connection made the session's: 0, or -1 to drop it. */
static int adopt_request(void *buf, ssize_t size)
{
    struct fuse_in_header *in = buf;
    if (size < (ssize_t)sizeof *in)
        return -1;
    if (in->opcode == FUSE_DESTROY || in->opcode == FUSE_INIT) {
        if (in->opcode == FUSE_DESTROY)
            views_gone();
        return -1;
    }
    in->unique |= VIEW_MARK;
    if (in->nodeid == FUSE_ROOT_ID)
        in->nodeid = views_root;
    if (in->opcode == FUSE_INTERRUPT && size >= (ssize_t)(sizeof *in + sizeof(struct fuse_interrupt_in)))
        ((struct fuse_interrupt_in *)(in + 1))->unique |= VIEW_MARK;
    __atomic_add_fetch(&lazylayer_viewconn_requests, 1, __ATOMIC_RELAXED);
    return 0;
}

static ssize_t conn_read(int fd, void *buf, size_t len, void *userdata)
{
    (void)userdata;
    if (store_fd < 0) {
        ssize_t res = read(fd, buf, len);
        const struct fuse_in_header *in = buf;
        if (res >= (ssize_t)sizeof *in && in->opcode == FUSE_INIT)
            store_init_unique = in->unique;
        return res;
    }
    if (views_fd < 0)
        return read(store_fd, buf, len);
    struct pollfd ready[2] = {{.fd = store_fd, .events = POLLIN}, {.fd = views_fd, .events = POLLIN}};
    if (poll(ready, 2, 0) <= 0) {
        errno = EINTR; /* pyfuse3 waits again */
        return -1;
    }
    int views = (ready[1].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
    int store = (ready[0].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
    if (views && store) {
        views = views_turn;
        views_turn = !views_turn;
    }
    if (!views)
        return read(store_fd, buf, len);
    ssize_t res = read(views_fd, buf, len);
    if (res < 0) {
        if (errno == ENODEV)
            views_gone();
        errno = EINTR;
        return -1;
    }
    if (adopt_request(buf, res) != 0) {
        errno = EINTR;
        return -1;
    }
    return res;
}

static size_t iov_bytes(const struct iovec *iov, int count)
{
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += iov[i].iov_len;
    return total;
}

/* A notification told to the views' connection too (every one: the views' kernel answers ENOENT
 * for a node it never heard of, and notifications are rare), the .images directory named as its
 * root there. */
static void notify_views(struct iovec *iov, int count, int code)
{
    if (count < 2 || iov[1].iov_len < sizeof(uint64_t))
        return;
    if (code != FUSE_NOTIFY_INVAL_ENTRY && code != FUSE_NOTIFY_INVAL_INODE && code != FUSE_NOTIFY_DELETE)
        return;
    uint64_t *first = iov[1].iov_base;
    uint64_t saved = *first;
    if (saved == views_root)
        *first = FUSE_ROOT_ID;
    if (writev(views_fd, iov, count) < 0) {
        /* ENOENT: the views' kernel never heard of that node; nothing to drop there */
    }
    *first = saved;
}

static ssize_t conn_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    struct fuse_out_header *out = iov[0].iov_base;
    if (iov[0].iov_len >= sizeof *out && (out->unique & VIEW_MARK)) {
        out->unique &= ~VIEW_MARK;
        if (views_fd < 0)
            return (ssize_t)iov_bytes(iov, count); /* unmounted meanwhile: nobody waits */
        return writev(views_fd, iov, count);
    }
    if (store_init_unique != 0 && iov[0].iov_len >= sizeof *out && out->unique == store_init_unique) {
        size_t total = iov_bytes(iov, count), at = 0;
        if (total <= INIT_REPLY_MAX) {
            for (int i = 0; i < count; i++) {
                memcpy(init_reply + at, iov[i].iov_base, iov[i].iov_len);
                at += iov[i].iov_len;
            }
            init_reply_len = total;
        }
        store_init_unique = 0;
    }
    ssize_t res = writev(store_fd >= 0 ? store_fd : fd, iov, count);
    if (views_fd >= 0 && iov[0].iov_len >= sizeof *out && out->unique == 0) {
        int err = errno; /* what libfuse reads when res is -1 */
        notify_views(iov, count, out->error);
        errno = err;
    }
    return res;
}

static const struct fuse_custom_io io = {.read = conn_read, .writev = conn_writev};

void lazylayer_viewconn_install(struct fuse_session *session)
{
    int placeholder = open("/dev/null", O_RDWR | O_CLOEXEC); /* se->fd until fuse_session_mount sets it */
    if (placeholder < 0)
        return;
    if (fuse_session_custom_io(session, &io, placeholder) != 0)
        close(placeholder);
    else
        installed = 1;
}

int lazylayer_viewconn_serve(int fuse_fd, int session_fd)
{
    if (!installed)
        return -ENOSYS;
    int set = epoll_create1(EPOLL_CLOEXEC);
    if (set < 0)
        return -errno;
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fuse_fd};
    if (epoll_ctl(set, EPOLL_CTL_ADD, fuse_fd, &event) != 0 || dup3(set, session_fd, O_CLOEXEC) < 0) {
        int err = errno;
        close(set);
        return -err;
    }
    close(set);
    epoll_fd = session_fd;
    store_fd = fuse_fd;
    return 0;
}

int lazylayer_viewconn_attach(int fd, const void *init_request, size_t size, uint64_t root)
{
    if (store_fd < 0 || views_fd >= 0)
        return -EINVAL;
    if (init_request != NULL) { /* a fresh mount: answer its INIT as the store's was answered */
        const struct fuse_in_header *in = init_request;
        if (size < sizeof *in || in->opcode != FUSE_INIT || init_reply_len < sizeof(struct fuse_out_header))
            return -EINVAL;
        unsigned char reply[INIT_REPLY_MAX];
        memcpy(reply, init_reply, init_reply_len);
        ((struct fuse_out_header *)reply)->unique = in->unique;
        if (write(fd, reply, init_reply_len) < 0)
            return -errno;
    }
    views_root = root;
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0)
        return -errno;
    views_fd = fd;
    return 0;
}

int lazylayer_viewconn_attached(void)
{
    return views_fd >= 0;
}
