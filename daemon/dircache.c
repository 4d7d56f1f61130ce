/* Directory listings the kernel keeps for pyfuse3 (loaded by daemon/dircache.py; why: see there).
 *
 * This library defines fuse_session_new. Loaded RTLD_GLOBAL before pyfuse3 is imported, it is
 * the definition pyfuse3's reference binds to; it calls libfuse's own with a copy of pyfuse3's
 * operations in which:
 *   - OPENDIR is answered ENOSYS: the kernel then never sends OPENDIR or RELEASEDIR again on
 *     this connection and opens every directory FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, so a
 *     listing is read through FUSE once and served from the page cache after that;
 *   - READDIR and READDIRPLUS carry the directory's inode in fi->fh (without an opendir the
 *     kernel sends fh 0, and pyfuse3 hands its handler the fh only).
 */
#define FUSE_USE_VERSION 32
#include <fuse3/fuse_lowlevel.h>
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

typedef void (*readdir_fn)(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *,
                                               size_t, void *);

/* Sessions started with the operations below (daemon/dircache.py reads it). */
int lazylayer_dircache_sessions;

static struct fuse_lowlevel_ops ops;
static readdir_fn their_readdir, their_readdirplus;

static void opendir_unsupported(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
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
    if (op_size != sizeof ops || (op->readdir == NULL && op->readdirplus == NULL))
        return libfuse_session_new(args, op, op_size, userdata); /* not the layout we know: as is */
    memcpy(&ops, op, sizeof ops);
    their_readdir = op->readdir;
    their_readdirplus = op->readdirplus;
    ops.opendir = opendir_unsupported;
    ops.releasedir = NULL;
    if (their_readdir != NULL)
        ops.readdir = readdir_by_inode;
    if (their_readdirplus != NULL)
        ops.readdirplus = readdirplus_by_inode;
    struct fuse_session *session = libfuse_session_new(args, &ops, sizeof ops, userdata);
    if (session != NULL)
        lazylayer_dircache_sessions++;
    return session;
}
