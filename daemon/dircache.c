/* Directory listings the kernel keeps for pyfuse3 (loaded by daemon/dircache.py; why: see there).
 *
 * This library defines fuse_session_new. Loaded RTLD_GLOBAL before pyfuse3 is imported, it is
 * the definition pyfuse3's reference binds to; it calls libfuse's own with a copy of pyfuse3's
 * operations in which:
 *   - OPENDIR is answered ENOSYS: the kernel then never sends OPENDIR or RELEASEDIR again on
 *     this connection and opens every directory FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, so a
 *     listing is read through FUSE once and served from the page cache after that (a kernel
 *     that does not say it can, in FUSE_INIT, gets pyfuse3's own opendir);
 *   - READDIR and READDIRPLUS carry the directory's inode in fi->fh (without an opendir the
 *     kernel sends fh 0, and pyfuse3 hands its handler the fh only);
 *   - GETATTR of a layer node is answered by daemon/attrcache.c when it can, GETXATTR and
 *     LISTXATTR of a node of a layer without xattrs by daemon/xattrless.c, a read-only OPEN of
 *     a layer file (and its RELEASE) by daemon/layeropen.c.
 */
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

#include "attrcache.h"
#include "layeropen.h"
#include "viewconn.h"
#include "xattrless.h"

typedef void (*init_fn)(void *, struct fuse_conn_info *);
typedef void (*opendir_fn)(fuse_req_t, fuse_ino_t, struct fuse_file_info *);
typedef void (*readdir_fn)(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *,
                                               size_t, void *);

/* Sessions started with the operations below, and whether the kernel of the last one takes
 * ENOSYS for OPENDIR (-1 until its FUSE_INIT): daemon/dircache.py reads both. */
int lazylayer_dircache_sessions;
int lazylayer_dircache_zero_opendir = -1;

static struct fuse_lowlevel_ops ops;
static init_fn their_init;
static opendir_fn their_opendir;
static readdir_fn their_readdir, their_readdirplus;

static void init_checked(void *userdata, struct fuse_conn_info *conn)
{
    lazylayer_dircache_zero_opendir = (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0;
    if (their_init != NULL)
        their_init(userdata, conn);
}

static void opendir_by_kernel(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (lazylayer_dircache_zero_opendir != 1) {
        their_opendir(req, ino, fi);
        return;
    }
    fuse_reply_err(req, ENOSYS);
}

static void readdir_by_inode(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    fi->fh = ino;
    their_readdir(req, ino, size, off, fi);
}

static void readdirplus_by_inode(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                                 struct fuse_file_info *fi)
{
    fi->fh = ino;
    their_readdirplus(req, ino, size, off, fi);
}

struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op, size_t op_size,
                                      void *userdata)
{
    session_new_fn libfuse_session_new = (session_new_fn)dlsym(RTLD_NEXT, "fuse_session_new");
    if (libfuse_session_new == NULL)
        return NULL;
    if (op_size != sizeof ops || op->opendir == NULL || (op->readdir == NULL && op->readdirplus == NULL))
        return libfuse_session_new(args, op, op_size, userdata); /* not the layout we know: as is */
    memcpy(&ops, op, sizeof ops);
    their_init = op->init;
    their_opendir = op->opendir;
    their_readdir = op->readdir;
    their_readdirplus = op->readdirplus;
    ops.init = init_checked;
    ops.opendir = opendir_by_kernel;
    ops.releasedir = NULL; /* LazyFS.releasedir has nothing to do: the fh is the inode */
    if (their_readdir != NULL)
        ops.readdir = readdir_by_inode;
    if (their_readdirplus != NULL)
        ops.readdirplus = readdirplus_by_inode;
    lazylayer_attrcache_install(&ops);
    lazylayer_xattrless_install(&ops);
    lazylayer_layeropen_install(&ops);
    struct fuse_session *session = libfuse_session_new(args, &ops, sizeof ops, userdata);
    if (session != NULL) {
        lazylayer_dircache_sessions++;
        lazylayer_viewconn_install(session);
    }
    return session;
}
