/* The registration's per-entry loop (shared/store/layerbuild.py `LayerScan.scan`), in C for the
 * entries that are the common case.
 *
 * Why: after the rows went to C (rowcodec.c), the Python loop that applies each TOC entry to the
 * tree was most of a registration: about 10 us an entry, ~150 ms of the bench's 20,869-entry
 * rootfs, on the path of a container's first look at a layer (resolve). Most entries are alike:
 * a regular file of one chunk, a directory or a symlink, without xattrs, at a new clean path
 * under a directory already there.
 *
 * What it does: it settles each entry as toc.py `settled` does (a name that is not already clean
 * goes to Python's), groups them as tree.py `grouped` does (chunk entries join
 * their file and take its name; user and group names are not backfilled: no row holds them,
 * and neither `_keep` nor `TreeBuilder.add` reads them), and for a group that is
 * that common case keeps what layerbuild.py `_keep` keeps and adds it to the tree as tree.py
 * `TreeBuilder.add` would. Every other group goes to the caller's Python (``apply``), which
 * validates, refuses or applies it by the rules there: this file never refuses an entry, it
 * only declines it, so the two cannot disagree on what a TOC may say. The prefetch landmark's
 * bound (`LayerRecord.prefetch_nodes`) is kept here for every group, as `scan` kept it.
 * tests/store/test_scanloop.py registers trees both ways and compares every row.
 */
#include "rowcodec.h"

#include <string.h>

static PyObject *s_type, *s_name, *s_xattrs, *s_size, *s_digest, *s_offset, *s_chunk_offset, *s_chunk_size,
    *s_chunk_digest, *s_inner_offset, *s_link_name, *s_mode, *s_empty, *s_double_slash, *s_slash_dot;

int scanloop_init(void) {
    const char *names[] = {"type", "name", "xattrs", "size", "digest", "offset", "chunk_offset", "chunk_size",
                           "chunk_digest", "inner_offset", "link_name", "mode", "", "//", "/."};
    PyObject **slots[] = {&s_type, &s_name, &s_xattrs, &s_size, &s_digest, &s_offset, &s_chunk_offset,
                          &s_chunk_size, &s_chunk_digest, &s_inner_offset, &s_link_name, &s_mode, &s_empty,
                          &s_double_slash, &s_slash_dot};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
    return 0;
}

typedef struct {
    PyObject *reg, *dir, *symlink, *chunk; /* the EntryType members */
    PyObject *nodes, *children;            /* the TreeBuilder's: path -> value, dir -> set of paths */
    PyObject *apply, *settle, *starts, *kinds, *landmark;
    long long mtime_max, payload_end, max_chunk_bytes;
    int allow_unverified;
    long long landmark_offset;
    Py_ssize_t landmark_bound;  /* -1: no landmark yet */
    long long *kept_starts;     /* payload starts of the files kept here, added to ``starts`` at the end */
    Py_ssize_t kept_count, kept_room;
} Scan;

/* ``offset`` kept for ``starts`` (one call of its frombytes at the end, not one append each). */
static int keep_start(Scan *scan, long long offset) {
    if (scan->kept_count == scan->kept_room) {
        Py_ssize_t room = scan->kept_room ? scan->kept_room * 2 : 4096;
        long long *grown = PyMem_Realloc(scan->kept_starts, (size_t)room * sizeof(long long));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        scan->kept_starts = grown;
        scan->kept_room = room;
    }
    scan->kept_starts[scan->kept_count++] = offset;
    return 0;
}

/* toc.py `is_digest`: sha256: and 64 lowercase hex digits */
static int is_digest(PyObject *text) {
    if (!PyUnicode_Check(text) || PyUnicode_GET_LENGTH(text) != 71 || !PyUnicode_IS_ASCII(text))
        return 0;
    const char *data = (const char *)PyUnicode_DATA(text);
    if (memcmp(data, "sha256:", 7) != 0)
        return 0;
    static unsigned char hex[256];
    if (!hex['0']) {
        for (int c = '0'; c <= '9'; c++)
            hex[c] = 1;
        for (int c = 'a'; c <= 'f'; c++)
            hex[c] = 1;
    }
    unsigned char all = 1;
    for (int i = 7; i < 71; i++)
        all &= hex[(unsigned char)data[i]];
    return all;
}

/* Whether a name of one-byte characters is clean as the slower path below judges it: no NUL,
 * no "//", no "/.", not starting with '.' or '/'. */
static int one_byte_clean(const Py_UCS1 *text, Py_ssize_t length) {
    if (text[0] == '.' || text[0] == '/')
        return 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        if (text[i] == 0)
            return 0;
        if (text[i] == '/' && i + 1 < length && (text[i + 1] == '/' || text[i + 1] == '.'))
            return 0;
    }
    return 1;
}

static int is_empty_text(PyObject *text) {
    return PyUnicode_Check(text) && PyUnicode_GET_LENGTH(text) == 0;
}

/* toc.py `settled`, in place: a name already clean (`normalize_name`'s fast case) loses a
 * trailing slash here, any other goes to ``settle`` (Python: it normalises or refuses it and
 * does the rest); the mode is cut to 07777; a chunk digest equal to the file's becomes the same
 * string. Applying it to a settled entry changes nothing. */
static int settle(Scan *scan, PyObject *entry) {
    PyObject *name = entry_get(entry, s_name), *chunk_digest = NULL, *digest = NULL;
    int result = -1;
    if (name == NULL)
        return -1;
    Py_ssize_t length = PyUnicode_Check(name) ? PyUnicode_GET_LENGTH(name) : -1;
    int clean = length >= 0;
    if (clean && length > 0 && PyUnicode_KIND(name) == PyUnicode_1BYTE_KIND) {
        clean = one_byte_clean(PyUnicode_1BYTE_DATA(name), length); /* one pass, the common case */
    } else if (clean && length > 0) {
        Py_UCS4 first = PyUnicode_READ_CHAR(name, 0);
        Py_ssize_t nul = PyUnicode_FindChar(name, 0, 0, length, 1);
        Py_ssize_t slashes = nul == -1 ? PyUnicode_Find(name, s_double_slash, 0, length, 1) : nul;
        Py_ssize_t dot = slashes == -1 ? PyUnicode_Find(name, s_slash_dot, 0, length, 1) : slashes;
        if (nul == -2 || slashes == -2 || dot == -2)
            goto done;
        clean = first != '.' && first != '/' && nul == -1 && slashes == -1 && dot == -1;
    }
    if (!clean) {
        PyObject *settled = PyObject_CallOneArg(scan->settle, entry);
        Py_XDECREF(settled);
        result = settled != NULL ? 0 : -1;
        goto done;
    }
    if (length > 0 && PyUnicode_READ_CHAR(name, length - 1) == '/') {
        PyObject *trimmed = PyUnicode_Substring(name, 0, length - 1);
        int set = trimmed != NULL ? PyObject_SetAttr(entry, s_name, trimmed) : -1;
        Py_XDECREF(trimmed);
        if (set < 0)
            goto done;
    }
    long long mode;
    if (long_of(entry, s_mode, &mode) < 0)
        goto done;
    if (mode & ~07777LL) {
        PyObject *cut = PyLong_FromLongLong(mode & 07777LL);
        int set = cut != NULL ? PyObject_SetAttr(entry, s_mode, cut) : -1;
        Py_XDECREF(cut);
        if (set < 0)
            goto done;
    }
    if ((chunk_digest = entry_get(entry, s_chunk_digest)) == NULL
        || (digest = entry_get(entry, s_digest)) == NULL)
        goto done;
    if (chunk_digest != digest && PyUnicode_Check(chunk_digest) && PyUnicode_Check(digest)
        && PyUnicode_GET_LENGTH(chunk_digest) > 0) {
        int same = PyUnicode_Compare(chunk_digest, digest);
        if (same == -1 && PyErr_Occurred())
            goto done;
        if (same == 0 && PyObject_SetAttr(entry, s_chunk_digest, digest) < 0)
            goto done;
    }
    result = 0;
done:
    Py_DECREF(name);
    Py_XDECREF(chunk_digest);
    Py_XDECREF(digest);
    return result;
}

/* The chunks a one-piece regular file keeps (tree.py `file_chunks`), or NULL: declined (no
 * error set) or failed. ``offset`` is where its payload starts. */
static PyObject *one_chunk(Scan *scan, PyObject *entry, long long *offset) {
    long long size, chunk_offset, chunk_size, inner;
    PyObject *digest = entry_get(entry, s_digest), *chunk_digest = NULL, *chunks = NULL;
    if (digest == NULL)
        return NULL;
    if (!PyUnicode_Check(digest) || (!is_empty_text(digest) && !is_digest(digest)))
        goto done;
    if (long_of(entry, s_size, &size) < 0)
        goto done;
    if (size == 0) {
        chunks = PyTuple_New(0);
        goto done;
    }
    if (long_of(entry, s_chunk_offset, &chunk_offset) < 0 || long_of(entry, s_chunk_size, &chunk_size) < 0
        || long_of(entry, s_inner_offset, &inner) < 0 || long_of(entry, s_offset, offset) < 0)
        goto done;
    if (chunk_offset != 0 || (chunk_size != 0 && chunk_size != size) || size < 0 || inner < 0
        || size > scan->max_chunk_bytes || inner > scan->max_chunk_bytes - size || *offset >= scan->payload_end)
        goto done;
    if ((chunk_digest = entry_get(entry, s_chunk_digest)) == NULL)
        goto done;
    PyObject *kept = digest;
    if (!is_empty_text(chunk_digest)) {
        if (chunk_digest != digest && !is_digest(chunk_digest))
            goto done;
        kept = chunk_digest;
    }
    if (is_empty_text(kept) && !scan->allow_unverified)
        goto done;
    PyObject *spec = PyTuple_New(5);
    if (spec == NULL)
        goto done;
    PyObject *fields[4] = {PyLong_FromLong(0), PyLong_FromLongLong(size), PyLong_FromLongLong(*offset),
                           PyLong_FromLongLong(inner)};
    for (int i = 0; i < 4; i++)
        PyTuple_SET_ITEM(spec, i, fields[i]); /* a NULL among them is checked below */
    Py_INCREF(kept);
    PyTuple_SET_ITEM(spec, 4, kept);
    if (fields[0] != NULL && fields[1] != NULL && fields[2] != NULL && fields[3] != NULL)
        chunks = PyTuple_Pack(1, spec);
    Py_DECREF(spec);
done:
    Py_DECREF(digest);
    Py_XDECREF(chunk_digest);
    return chunks;
}

/* The common case kept and added to the tree; NULL: declined (no error set) or failed. */
static PyObject *apply_common(Scan *scan, PyObject *entry) {
    PyObject *type = entry_get(entry, s_type), *xattrs = NULL, *path = NULL, *link = NULL;
    PyObject *parent = NULL, *chunks = NULL, *attr = NULL, *value = NULL;
    if (type == NULL)
        return NULL;
    if (type != scan->reg && type != scan->dir && type != scan->symlink)
        goto done;
    if ((xattrs = entry_get(entry, s_xattrs)) == NULL || !PyDict_Check(xattrs) || PyDict_GET_SIZE(xattrs))
        goto done;
    if ((path = entry_get(entry, s_name)) == NULL || !PyUnicode_Check(path) || PyUnicode_GET_LENGTH(path) == 0)
        goto done;
    int landmark = PyUnicode_Compare(path, scan->landmark);
    if (landmark == 0 || (landmark == -1 && PyErr_Occurred()))
        goto done;
    if (type == scan->symlink && ((link = entry_get(entry, s_link_name)) == NULL || !PyUnicode_Check(link)
                                  || PyUnicode_GET_LENGTH(link) == 0))
        goto done;
    Py_ssize_t slash = PyUnicode_FindChar(path, '/', 0, PyUnicode_GET_LENGTH(path), -1);
    if (slash == -2)
        goto done;
    if (slash >= 0) {
        parent = PyUnicode_Substring(path, 0, slash);
    } else {
        parent = s_empty;
        Py_INCREF(parent);
    }
    if (parent == NULL)
        goto done;
    PyObject *siblings = PyDict_GetItemWithError(scan->children, parent);
    if (siblings == NULL || !PySet_Check(siblings))
        goto done;
    int there = PyDict_Contains(scan->nodes, path);
    if (there != 0)
        goto done;
    long long offset = 0;
    if (type == scan->reg) {
        if ((chunks = one_chunk(scan, entry, &offset)) == NULL)
            goto done;
    } else if ((chunks = PyTuple_New(0)) == NULL) {
        goto done;
    }
    if ((attr = attr_row(entry, scan->kinds, scan->mtime_max)) == NULL)
        goto done;
    if ((value = PyTuple_Pack(3, type, attr, chunks)) == NULL)
        goto done;
    if (PyTuple_GET_SIZE(chunks) && keep_start(scan, offset) < 0)
        goto failed;
    if (PyDict_SetItem(scan->nodes, path, value) < 0)
        goto failed;
    if (type == scan->dir) {
        PyObject *under = PySet_New(NULL);
        int stored = under != NULL ? PyDict_SetItem(scan->children, path, under) : -1;
        Py_XDECREF(under);
        if (stored < 0)
            goto failed;
    }
    if (PySet_Add(siblings, path) < 0)
        goto failed;
    goto done;
failed:
    Py_CLEAR(value);
done:
    Py_DECREF(type);
    Py_XDECREF(xattrs);
    Py_XDECREF(path);
    Py_XDECREF(link);
    Py_XDECREF(parent);
    Py_XDECREF(chunks);
    Py_XDECREF(attr);
    return value;
}

/* Whether ``kept`` is a regular file whose first chunk starts in the blob before ``offset``: such a file,
 * listed after the prefetch landmark, raises the landmark's bound (layerbuild.py `LayerScan.scan`) */
static int starts_before(PyObject *kept, long long offset) {
    if (!PyTuple_CheckExact(kept) || PyTuple_GET_SIZE(kept) != 3)
        return 0;
    PyObject *chunks = PyTuple_GET_ITEM(kept, 2);
    if (!PyTuple_Check(chunks) || PyTuple_GET_SIZE(chunks) == 0)
        return 0;
    PyObject *first = PyTuple_GET_ITEM(chunks, 0);
    if (!PyTuple_Check(first) || PyTuple_GET_SIZE(first) < 3)
        return 0;
    long long blob_offset = PyLong_AsLongLong(PyTuple_GET_ITEM(first, 2));
    if (blob_offset == -1 && PyErr_Occurred())
        return -1;
    return blob_offset < offset;
}

/* One group applied (here or by ``apply``), then the landmark's bound kept as `scan` kept it. */
static int finish(Scan *scan, PyObject *entry, PyObject *pieces) {
    PyObject *kept = pieces == NULL ? apply_common(scan, entry) : NULL;
    if (kept == NULL) {
        if (PyErr_Occurred())
            return -1;
        PyObject *group = pieces != NULL ? pieces : PyList_New(1);
        if (group == NULL)
            return -1;
        if (pieces == NULL) {
            Py_INCREF(entry);
            PyList_SET_ITEM(group, 0, entry);
        }
        kept = PyObject_CallFunctionObjArgs(scan->apply, entry, group, NULL);
        if (pieces == NULL)
            Py_DECREF(group);
        if (kept == NULL)
            return -1;
    }
    int result = -1;
    PyObject *path = entry_get(entry, s_name);
    if (path == NULL)
        goto done;
    int landmark = PyUnicode_Check(path) ? PyUnicode_Compare(path, scan->landmark) : 1;
    if (landmark == -1 && PyErr_Occurred())
        goto done;
    if (landmark == 0) {
        if (long_of(entry, s_offset, &scan->landmark_offset) < 0)
            goto done;
        scan->landmark_bound = PyDict_GET_SIZE(scan->nodes);
    } else if (scan->landmark_bound >= 0) {
        int before = starts_before(kept, scan->landmark_offset);
        if (before < 0)
            goto done;
        if (before)
            scan->landmark_bound = PyDict_GET_SIZE(scan->nodes);
    }
    result = 0;
done:
    Py_XDECREF(path);
    Py_DECREF(kept);
    return result;
}

const char scan_groups_doc[] =
"scan_groups(entries, types, nodes, children, apply, starts, kinds, mtime_max, payload_end,\n"
"            max_chunk_bytes, allow_unverified, landmark, toc_error, settle) -> (landmark offset, landmark bound)\n\n"
"Every entry of ``entries`` settled (a name not already clean by ``settle``), grouped and applied\n"
"to the tree ``nodes`` / ``children``: the common case here, any other group by\n"
"``apply(entry, pieces) -> kept``.\n"
"``types``: (REG, DIR, SYMLINK, CHUNK); ``starts``: the array('q') of payload starts, which gets\n"
"those of the files kept here. The bound is None when there is no prefetch landmark.\n"
"See layerbuild.py `LayerScan.scan`.";

PyObject *scan_groups(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 14 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 4 || !PyDict_Check(args[2])
        || !PyDict_Check(args[3]) || !PyDict_Check(args[6]) || !PyUnicode_Check(args[11])) {
        PyErr_SetString(PyExc_TypeError, "scan_groups: see its doc for the 14 arguments");
        return NULL;
    }
    Scan scan = {
        PyTuple_GET_ITEM(args[1], 0), PyTuple_GET_ITEM(args[1], 1), PyTuple_GET_ITEM(args[1], 2),
        PyTuple_GET_ITEM(args[1], 3), args[2], args[3], args[4], args[13], args[5], args[6], args[11],
        PyLong_AsLongLong(args[7]), PyLong_AsLongLong(args[8]), PyLong_AsLongLong(args[9]), PyObject_IsTrue(args[10]),
        0, -1, NULL, 0, 0,
    };
    PyObject *toc_error = args[12], *iterator = NULL, *entry, *current = NULL, *pieces = NULL, *result = NULL;
    int current_is_reg = 0;
    if (PyErr_Occurred() || scan.allow_unverified < 0)
        goto done;
    PyObject *typecode = PyObject_GetAttrString(scan.starts, "typecode");
    int int64s = typecode != NULL && PyUnicode_Check(typecode) && PyUnicode_CompareWithASCIIString(typecode, "q") == 0
        && sizeof(long long) == 8;
    Py_XDECREF(typecode);
    if (!int64s) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "scan_groups: starts is an array('q')");
        goto done;
    }
    if ((iterator = PyObject_GetIter(args[0])) == NULL)
        goto done;
    while ((entry = PyIter_Next(iterator)) != NULL) {
        if (settle(&scan, entry) < 0) {
            Py_DECREF(entry);
            goto done;
        }
        PyObject *type = entry_get(entry, s_type);
        if (type == NULL) {
            Py_DECREF(entry);
            goto done;
        }
        Py_DECREF(type); /* the enum member outlives the loop: compared by identity only */
        if (type == scan.chunk) {
            int joined = -1;
            if (current == NULL || !current_is_reg) {
                PyObject *name = entry_get(entry, s_name);
                if (name != NULL) {
                    PyErr_Format(toc_error, "entry %R: chunk entry does not follow a regular file", name);
                    Py_DECREF(name);
                }
            } else {
                PyObject *name = entry_get(current, s_name);
                if (name != NULL && PyObject_SetAttr(entry, s_name, name) == 0) {
                    if (pieces == NULL && (pieces = PyList_New(1)) != NULL) {
                        Py_INCREF(current);
                        PyList_SET_ITEM(pieces, 0, current);
                    }
                    joined = pieces != NULL ? PyList_Append(pieces, entry) : -1;
                }
                Py_XDECREF(name);
            }
            Py_DECREF(entry);
            if (joined < 0)
                goto done;
            continue;
        }
        if (current != NULL) {
            int finished = finish(&scan, current, pieces);
            Py_CLEAR(current);
            Py_CLEAR(pieces);
            if (finished < 0) {
                Py_DECREF(entry);
                goto done;
            }
        }
        current = entry;
        current_is_reg = type == scan.reg;
    }
    if (PyErr_Occurred())
        goto done;
    if (current != NULL && finish(&scan, current, pieces) < 0)
        goto done;
    if (scan.kept_count) {
        PyObject *packed = PyBytes_FromStringAndSize((const char *)scan.kept_starts,
                                                     scan.kept_count * (Py_ssize_t)sizeof(long long));
        PyObject *added = packed != NULL ? PyObject_CallMethod(scan.starts, "frombytes", "O", packed) : NULL;
        Py_XDECREF(packed);
        if (added == NULL)
            goto done;
        Py_DECREF(added);
    }
    if (scan.landmark_bound < 0)
        result = Py_BuildValue("(LO)", scan.landmark_offset, Py_None);
    else
        result = Py_BuildValue("(Ln)", scan.landmark_offset, scan.landmark_bound);
done:
    Py_XDECREF(iterator);
    Py_XDECREF(current);
    Py_XDECREF(pieces);
    PyMem_Free(scan.kept_starts);
    return result;
}
