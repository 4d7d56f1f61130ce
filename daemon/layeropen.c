/* Opens of layer files answered in C (built into daemon/dircache.c's library).
 *
 * A Python app's start on the bench image opened 642 files of its layers, each an OPEN and a
 * RELEASE through pyfuse3 and trio (about 25 us each) for an answer that never varies: a layer's
 * files never change. A read-only OPEN of a layer node (inode >= 2**32) is answered here with
 * keep_cache and an fh naming the inode with serial C_SERIAL; the front builds the read handle
 * from that fh on the first read, as it does for an fh an earlier front handed out
 * (daemon/handles.py), and the RELEASE of such an fh is answered here too. Opens that could
 * write (LazyFS.open answers EROFS), and the layout's files (inodes < 2**32: info, blob and state
 * files, whose content may change) still go to pyfuse3. Regular files are all the kernel sends
 * an OPEN for: directories are OPENDIRs, and the store is mounted nodev (no device opens reach it).
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>

#include "layeropen.h"

#define LAYER_INODES (1ULL << 32)
#define SERIAL_SHIFT 60 /* daemon/handles.py: fh = serial << 60 | inode */
#define C_SERIAL 15ULL
#define WRITING (O_TRUNC | O_APPEND | O_CREAT)

typedef void (*open_fn)(fuse_req_t, fuse_ino_t, struct fuse_file_info *);

/* Opens answered here: daemon/dircache.py reads it for `lazylayer status`. */
unsigned long long lazylayer_layeropen_hits;

static open_fn their_open, their_release;

static int kept_open(uint64_t ino, int flags)
{
    return ino >= LAYER_INODES && (ino >> SERIAL_SHIFT) == 0 && (flags & O_ACCMODE) == O_RDONLY
           && (flags & WRITING) == 0;
}

static int kept_fh(uint64_t fh)
{
    return (fh >> SERIAL_SHIFT) == C_SERIAL;
}

static void open_layer_file(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!kept_open(ino, fi->flags)) {
        their_open(req, ino, fi);
        return;
    }
    __atomic_add_fetch(&lazylayer_layeropen_hits, 1, __ATOMIC_RELAXED);
    fi->fh = C_SERIAL << SERIAL_SHIFT | ino;
    fi->keep_cache = 1;
    fi->direct_io = 0;
    fuse_reply_open(req, fi);
}

static void release_layer_file(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!kept_fh(fi->fh)) {
        their_release(req, ino, fi);
        return;
    }
    fuse_reply_err(req, 0);
}

int lazylayer_layeropen_takes(const struct fuse_in_header *in, int size)
{
    if (their_open == NULL)
        return 0;
    if (in->opcode == FUSE_OPEN && size >= (int)(sizeof *in + sizeof(struct fuse_open_in))) {
        const struct fuse_open_in *arg = (const void *)(in + 1);
        return kept_open(in->nodeid, (int)arg->flags);
    }
    if (in->opcode == FUSE_RELEASE && size >= (int)(sizeof *in + sizeof(struct fuse_release_in))) {
        const struct fuse_release_in *arg = (const void *)(in + 1);
        return kept_fh(arg->fh);
    }
    return 0;
}

void lazylayer_layeropen_install(struct fuse_lowlevel_ops *ops)
{
    if (ops->open != NULL && ops->release != NULL) {
        their_open = ops->open;
        their_release = ops->release;
        ops->open = open_layer_file;
        ops->release = release_layer_file;
    }
}
