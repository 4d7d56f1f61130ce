/* Attributes of layer nodes answered in C (built into daemon/dircache.c's library; why: see
 * daemon/dircache.py).
 *
 * Every attribute reply pyfuse3 sends for a node of a layer or merged view (inode >= 2**32) passes
 * through the definitions of fuse_reply_entry, fuse_reply_attr and fuse_add_direntry_plus here
 * (bound before libfuse's, as fuse_session_new in dircache.c is) and is kept with the deadline
 * the kernel was given. A GETATTR for a kept node is answered from here, with what is left of
 * that deadline, and never reaches Python; anything else goes on to pyfuse3. Nothing is kept
 * longer than the kernel itself was allowed to keep it, and layout nodes (< 2**32) never are
 * (a layer evicted meanwhile answers as the kernel's own cache would, until that deadline).
 *
 * Such a GETATTR (or an xattr request of a layer without xattrs, daemon/xattrless.c, or the
 * open of a layer file, daemon/layeropen.c) is answered before pyfuse3 sees that a request
 * came: fuse_session_receive_buf,
 * also defined here, serves it and takes the next request that arrives within SPIN_NS (polling,
 * not sleeping), up to SERVE_AT_MOST of them or BUDGET_NS in all, then tells pyfuse3 EINTR (it
 * waits again, through trio: lazylayer_attrcache_burst_ended). A client stat-ing one directory
 * after another (a `find` just after a cold one) gets a reply in a few microseconds of C instead
 * of a trio round and a Python handler each.
 */
#define FUSE_USE_VERSION 32
#include <fuse3/fuse_lowlevel.h>
#include <dlfcn.h>
#include <errno.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attrcache.h"
#include "layeropen.h"
#include "xattrless.h"

#define LAYER_INODES (1ULL << 32)
#define SLOTS (1U << 17) /* a power of two; half of it filled at most, then emptied */
#define SERVE_AT_MOST 64
#define SPIN_NS 100000ULL
#define BUDGET_NS 1000000ULL /* how long one burst here holds up trio's other tasks (worker replies) */

struct kept {
    uint64_t ino; /* 0: a free slot */
    uint64_t deadline_ns;
    struct stat attr;
};

/* GETATTRs answered here: daemon/dircache.py reads it for `lazylayer status`. */
unsigned long long lazylayer_attrcache_hits;
/* Set when a burst served here ends: daemon/fusedispatch.py then waits through trio once, so
 * other tasks get their turn after every burst, not after every YIELD_EVERY of them. */
int lazylayer_attrcache_burst_ended;

static struct kept *table;
static int spin; /* only with another CPU to run the client meanwhile */
static unsigned int filled;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void (*their_getattr)(fuse_req_t, fuse_ino_t, struct fuse_file_info *);

typedef int (*reply_entry_fn)(fuse_req_t, const struct fuse_entry_param *);
typedef int (*reply_attr_fn)(fuse_req_t, const struct stat *, double);
typedef size_t (*direntry_plus_fn)(fuse_req_t, char *, size_t, const char *, const struct fuse_entry_param *, off_t);

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static unsigned int slot_of(uint64_t ino)
{
    return (unsigned int)((ino * 0x9E3779B97F4A7C15ULL) >> 40) & (SLOTS - 1);
}

static void keep(const struct stat *attr, double timeout)
{
    uint64_t ino = (uint64_t)attr->st_ino;
    if (ino < LAYER_INODES || !(timeout > 0.0) || table == NULL)
        return;
    uint64_t deadline = now_ns() + (uint64_t)(timeout > 1e9 ? 1e18 : timeout * 1e9);
    pthread_mutex_lock(&lock);
    if (filled >= SLOTS / 2) { /* full: start again (its pages given back) rather than evict one by one */
        struct kept *empty = calloc(SLOTS, sizeof(struct kept));
        if (empty == NULL) {
            pthread_mutex_unlock(&lock);
            return;
        }
        free(table);
        table = empty;
        filled = 0;
    }
    unsigned int i = slot_of(ino);
    while (table[i].ino != 0 && table[i].ino != ino)
        i = (i + 1) & (SLOTS - 1);
    if (table[i].ino == 0)
        filled++;
    table[i].ino = ino;
    table[i].deadline_ns = deadline;
    table[i].attr = *attr;
    pthread_mutex_unlock(&lock);
}

/* A copy of what is kept for ino and the seconds it may still be kept, or 0.0. */
static double lookup(uint64_t ino, struct stat *attr)
{
    double left = 0.0;
    pthread_mutex_lock(&lock);
    unsigned int i = slot_of(ino);
    while (table[i].ino != 0 && table[i].ino != ino)
        i = (i + 1) & (SLOTS - 1);
    if (table[i].ino == ino) {
        uint64_t now = now_ns();
        if (table[i].deadline_ns > now) {
            *attr = table[i].attr;
            left = (double)(table[i].deadline_ns - now) / 1e9;
        }
    }
    pthread_mutex_unlock(&lock);
    return left;
}

int fuse_reply_entry(fuse_req_t req, const struct fuse_entry_param *e)
{
    static reply_entry_fn theirs;
    if (theirs == NULL)
        theirs = (reply_entry_fn)dlsym(RTLD_NEXT, "fuse_reply_entry");
    if (e->ino != 0)
        keep(&e->attr, e->attr_timeout);
    return theirs(req, e);
}

static reply_attr_fn libfuse_reply_attr(void)
{
    static reply_attr_fn theirs;
    if (theirs == NULL)
        theirs = (reply_attr_fn)dlsym(RTLD_NEXT, "fuse_reply_attr");
    return theirs;
}

int fuse_reply_attr(fuse_req_t req, const struct stat *attr, double attr_timeout)
{
    keep(attr, attr_timeout);
    return libfuse_reply_attr()(req, attr, attr_timeout);
}

size_t fuse_add_direntry_plus(fuse_req_t req, char *buf, size_t bufsize, const char *name,
                              const struct fuse_entry_param *e, off_t off)
{
    static direntry_plus_fn theirs;
    if (theirs == NULL)
        theirs = (direntry_plus_fn)dlsym(RTLD_NEXT, "fuse_add_direntry_plus");
    if (buf != NULL && e->ino != 0)
        keep(&e->attr, e->attr_timeout);
    return theirs(req, buf, bufsize, name, e, off);
}

/* What fuse_session_receive_buf found for the request it hands to libfuse right away: the
 * reply must not depend on a second lookup (an entry expiring in between would send the request
 * to pyfuse3, whose coroutine nobody would await). */
static struct stat taken_attr;
static double taken_left;

static void getattr_kept(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat attr;
    double left;
    if (taken_left > 0.0) {
        attr = taken_attr;
        left = taken_left;
        taken_left = 0.0;
    } else {
        left = ino >= LAYER_INODES ? lookup(ino, &attr) : 0.0;
    }
    if (left > 0.0) {
        __atomic_add_fetch(&lazylayer_attrcache_hits, 1, __ATOMIC_RELAXED);
        libfuse_reply_attr()(req, &attr, left);
        return;
    }
    their_getattr(req, ino, fi);
}

/* Whether buf holds a GETATTR this file answers (its attributes then in taken_*), an xattr
 * request daemon/xattrless.c does, or an open or release daemon/layeropen.c does. */
static int answerable(const struct fuse_buf *buf, int size)
{
    if ((buf->flags & FUSE_BUF_IS_FD) || size < (int)sizeof(struct fuse_in_header))
        return 0;
    const struct fuse_in_header *in = buf->mem;
    if (lazylayer_xattrless_takes(in) || lazylayer_layeropen_takes(in, size))
        return 1;
    if (their_getattr == NULL || in->opcode != FUSE_GETATTR || in->nodeid < LAYER_INODES)
        return 0;
    taken_left = lookup(in->nodeid, &taken_attr);
    return taken_left > 0.0;
}

/* Whether a request is waiting on fd within wait_ns: polled without sleeping, so the kernel
 * finds nobody to wake on another CPU when it queues one (a wake-up there costs more than the
 * whole reply). */
static int next_within(int fd, uint64_t wait_ns)
{
    uint64_t until = now_ns() + wait_ns;
    struct pollfd next = {.fd = fd, .events = POLLIN};
    do {
        if (poll(&next, 1, 0) == 1)
            return (next.revents & POLLIN) != 0;
    } while (now_ns() < until);
    return 0;
}

typedef int (*receive_fn)(struct fuse_session *, struct fuse_buf *);

int fuse_session_receive_buf(struct fuse_session *se, struct fuse_buf *buf)
{
    static receive_fn theirs;
    if (theirs == NULL)
        theirs = (receive_fn)dlsym(RTLD_NEXT, "fuse_session_receive_buf");
    uint64_t start = now_ns();
    for (int served = 0;; served++) {
        int res = theirs(se, buf);
        if (res <= 0 || !answerable(buf, res))
            return res;
        fuse_session_process_buf(se, buf);
        taken_left = 0.0; /* used by getattr_kept, or by nobody if libfuse refused the request */
        if (served + 1 >= SERVE_AT_MOST || now_ns() - start > BUDGET_NS || !spin
            || !next_within(fuse_session_fd(se), SPIN_NS)) {
            lazylayer_attrcache_burst_ended = 1;
            return -EINTR;
        }
    }
}

void lazylayer_attrcache_install(struct fuse_lowlevel_ops *ops)
{
    if (ops->getattr == NULL || libfuse_reply_attr() == NULL)
        return;
    if (table == NULL)
        table = calloc(SLOTS, sizeof(struct kept));
    if (table == NULL)
        return;
    spin = sysconf(_SC_NPROCESSORS_ONLN) > 1;
    their_getattr = ops->getattr;
    ops->getattr = getattr_kept;
}
