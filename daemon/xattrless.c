/* The xattrs of layers that have none, answered in C (built into daemon/dircache.c's library).
 *
 * overlayfs asks each lower layer's node it looks up for its own xattrs (trusted.overlay.opaque,
 * .redirect, .metacopy, ...): a Python app's start on the bench image sent 1,642 GETXATTRs to
 * the front, each a trio round and a Python handler (about 30 us) that answered ENODATA.
 * Registration counts the nodes of a layer that may show an xattr (shared/store/layerbuild.py,
 * `LayerRecord.xattr_nodes`); when a layer has none, the front adds its id here
 * (daemon/dircache.py `xattrless`), and a GETXATTR of any node of it is answered ENODATA, a
 * LISTXATTR the empty list, before pyfuse3 learns a request came (daemon/attrcache.c serves
 * them in its bursts). Every other node, layout nodes and merged views included, still goes
 * to pyfuse3. Ids are never taken back: a layer's nodes never change, and the store never gives
 * a layer id to another layer.
 */
#include <errno.h>
#include <pthread.h>

#include "xattrless.h"

#define LAYER_INODES (1ULL << 32)
#define ID_SLOTS 4096U /* a power of two; filled to half at most, later layers go to Python */

typedef void (*getxattr_fn)(fuse_req_t, fuse_ino_t, const char *, size_t);
typedef void (*listxattr_fn)(fuse_req_t, fuse_ino_t, size_t);

/* Requests answered here: daemon/dircache.py reads it for `lazylayer status`. */
unsigned long long lazylayer_xattrless_hits;

static uint32_t ids[ID_SLOTS]; /* layer ids, never 0; 0 marks a free slot */
static unsigned int id_count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static getxattr_fn their_getxattr;
static listxattr_fn their_listxattr;

static unsigned int slot_of(uint32_t id)
{
    return (id * 2654435761U) & (ID_SLOTS - 1);
}

int lazylayer_xattrless_add(uint32_t layer_id)
{
    if (layer_id == 0)
        return 0;
    pthread_mutex_lock(&lock);
    unsigned int i = slot_of(layer_id);
    while (ids[i] != 0 && ids[i] != layer_id)
        i = (i + 1) & (ID_SLOTS - 1);
    int added = ids[i] == layer_id;
    if (!added && id_count < ID_SLOTS / 2) {
        ids[i] = layer_id;
        id_count++;
        added = 1;
    }
    pthread_mutex_unlock(&lock);
    return added;
}

static int xattrless(uint64_t ino)
{
    if (ino < LAYER_INODES)
        return 0;
    uint32_t id = (uint32_t)(ino >> 32);
    pthread_mutex_lock(&lock);
    unsigned int i = slot_of(id);
    while (ids[i] != 0 && ids[i] != id)
        i = (i + 1) & (ID_SLOTS - 1);
    int found = ids[i] == id;
    pthread_mutex_unlock(&lock);
    return found;
}

static void getxattr_or_none(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    if (!xattrless(ino)) {
        their_getxattr(req, ino, name, size);
        return;
    }
    __atomic_add_fetch(&lazylayer_xattrless_hits, 1, __ATOMIC_RELAXED);
    fuse_reply_err(req, ENODATA);
}

static void listxattr_or_none(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    if (!xattrless(ino)) {
        their_listxattr(req, ino, size);
        return;
    }
    __atomic_add_fetch(&lazylayer_xattrless_hits, 1, __ATOMIC_RELAXED);
    if (size == 0)
        fuse_reply_xattr(req, 0); /* the size of the list: nothing */
    else
        fuse_reply_buf(req, NULL, 0);
}

int lazylayer_xattrless_takes(const struct fuse_in_header *in)
{
    return ((in->opcode == FUSE_GETXATTR && their_getxattr != NULL)
            || (in->opcode == FUSE_LISTXATTR && their_listxattr != NULL))
           && xattrless(in->nodeid);
}

void lazylayer_xattrless_install(struct fuse_lowlevel_ops *ops)
{
    if (ops->getxattr != NULL && ops->listxattr != NULL) {
        their_getxattr = ops->getxattr;
        their_listxattr = ops->listxattr;
        ops->getxattr = getxattr_or_none;
        ops->listxattr = listxattr_or_none;
    }
}
