/* A layer's node, dirent and file-chunk rows encoded in C (shared/store/layerbuild.py's
 * `LayerScan.rows` drives it, one batch per call).
 *
 * Why: registering the bench's 20,870-entry rootfs spent ~60 ms of its ~200 in the Python loop
 * that packs keys and msgpack values once per node and per chunk, on the path of a layer's first
 * read (resolve). Everything decided about the tree (validation, overlay rules, ids, link counts)
 * stays in Python and happens before: this file only lays validated values out as bytes, and
 * hands every case that is not the common one back to the caller's Python functions (a node
 * whose attributes need fixing, a whiteout or root landmark name, a chunk without a plain sha256
 * digest). The values are byte for byte what `msgspec.msgpack` writes (msgpackwrite.h), so the
 * readers (metadata.py) decode them as before; tests/store/test_rowcodec.py compares the two.
 * The module's other half, scanloop.c, is the loop that applies the TOC's entries before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "msgpackwrite.h"
#include "rowcodec.h"

/* hex digit -> value, -1 for anything else (filled by the module's init) */
static signed char hex_values[256];

static void fill_hex_values(void) {
    memset(hex_values, -1, sizeof hex_values);
    for (int i = 0; i < 10; i++)
        hex_values['0' + i] = (signed char)i;
    for (int i = 0; i < 6; i++)
        hex_values['a' + i] = hex_values['A' + i] = (signed char)(10 + i);
}

/* b"D" + the 32 raw bytes of "sha256:<64 hex>" (store/chunks.py `digest_key`); NULL without an
 * error set when the digest is not of that form (the caller's Python decides then) */
static PyObject *digest_key(const char *digest, Py_ssize_t size) {
    if (size != 71 || memcmp(digest, "sha256:", 7) != 0)
        return NULL;
    char raw[33];
    raw[0] = 'D';
    for (int i = 0; i < 32; i++) {
        int high = hex_values[(unsigned char)digest[7 + 2 * i]], low = hex_values[(unsigned char)digest[8 + 2 * i]];
        if (high < 0 || low < 0)
            return NULL;
        raw[1 + i] = (char)(high << 4 | low);
    }
    return PyBytes_FromStringAndSize(raw, 33);
}

static PyObject *pair(PyObject *key, PyObject *value) {
    if (key == NULL || value == NULL) {
        Py_XDECREF(key);
        Py_XDECREF(value);
        return NULL;
    }
    PyObject *row = PyTuple_Pack(2, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return row;
}

static int append(PyObject *list, PyObject *row) {
    if (row == NULL)
        return -1;
    int failed = PyList_Append(list, row);
    Py_DECREF(row);
    return failed;
}

typedef struct {
    uint32_t layer_id;
    const int64_t *starts; /* sorted payload starts, payload end last (tree.py `PayloadStarts`) */
    Py_ssize_t start_count;
    PyObject *chunk_key; /* (digest, blob offset, inner offset) -> data key, for other digests */
    PyObject *rows;
    long long payload;
    long long chunks;
} ChunkJob;

/* msgpack [size, blob offset, inner offset, blob end, digest, data key] (metadata.py `FileChunk`) */
static PyObject *chunk_value(ChunkJob *job, PyObject *spec) {
    PyObject *size = PyTuple_GET_ITEM(spec, 1), *blob_offset = PyTuple_GET_ITEM(spec, 2);
    PyObject *inner = PyTuple_GET_ITEM(spec, 3), *digest = PyTuple_GET_ITEM(spec, 4);
    long long offset = PyLong_AsLongLong(blob_offset);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t low = 0, high = job->start_count; /* bisect_right */
    while (low < high) {
        Py_ssize_t middle = (low + high) / 2;
        if (offset < job->starts[middle]) high = middle; else low = middle + 1;
    }
    if (low >= job->start_count) {
        PyErr_SetString(PyExc_IndexError, "a chunk starts past the payload end");
        return NULL;
    }
    Py_ssize_t digest_size;
    const char *digest_text = PyUnicode_AsUTF8AndSize(digest, &digest_size);
    PyObject *key = NULL;
    if (digest_text != NULL) {
        key = digest_key(digest_text, digest_size);
        if (key == NULL && !PyErr_Occurred())
            key = PyObject_CallFunctionObjArgs(job->chunk_key, digest, blob_offset, inner, NULL);
    }
    PyObject *value = NULL;
    if (key != NULL && !PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "a chunk's data key is bytes");
    } else if (key != NULL) {
        Py_ssize_t room = 1 + 4 * 9 + 5 + digest_size + 5 + PyBytes_GET_SIZE(key);
        value = PyBytes_FromStringAndSize(NULL, room);
        unsigned char *p = value == NULL ? NULL : (unsigned char *)PyBytes_AS_STRING(value);
        if (p != NULL) {
            unsigned char *start = p;
            *p++ = 0x96;
            if ((p = put_int(p, size)) && (p = put_int(p, blob_offset)) && (p = put_int(p, inner))) {
                p = put_ll(p, job->starts[low]); /* the blob end */
                p = put_raw(p, digest_text, digest_size, 1);
                p = put_raw(p, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), 0);
                _PyBytes_Resize(&value, p - start); /* NULL, an error set, if it fails */
            } else {
                Py_CLEAR(value);
            }
        }
        if (value != NULL) {
            long long length = PyLong_AsLongLong(size);
            if (length == -1 && PyErr_Occurred()) {
                Py_CLEAR(value);
            } else if (__builtin_add_overflow(job->payload, length, &job->payload)) {
                PyErr_SetString(PyExc_OverflowError, "a layer's payload over 2**63 bytes");
                Py_CLEAR(value);
            }
        }
    }
    Py_XDECREF(key);
    return value;
}

static int add_chunks(ChunkJob *job, uint32_t node_id, PyObject *specs) {
    if (!PyTuple_Check(specs)) {
        PyErr_SetString(PyExc_TypeError, "a node's chunks are a tuple");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(specs); i++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, i);
        if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != 5) {
            PyErr_SetString(PyExc_TypeError, "a chunk spec is a 5-tuple");
            return -1;
        }
        unsigned long long chunk_offset = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(spec, 0));
        if (chunk_offset == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        unsigned char raw[16], *p = put_be(raw, job->layer_id, 4);
        put_be(put_be(p, node_id, 4), chunk_offset, 8);
        if (append(job->rows, pair(PyBytes_FromStringAndSize((char *)raw, 16), chunk_value(job, spec))) < 0)
            return -1;
        job->chunks++;
    }
    return 0;
}

/* bytes ``prefix`` followed by ``size`` bytes of ``data``: a dirent's key, its parent's key and its name */
static PyObject *joined_key(PyObject *prefix, const char *data, Py_ssize_t size) {
    PyObject *key = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(prefix) + size);
    if (key != NULL) {
        memcpy(PyBytes_AS_STRING(key), PyBytes_AS_STRING(prefix), (size_t)PyBytes_GET_SIZE(prefix));
        memcpy(PyBytes_AS_STRING(key) + PyBytes_GET_SIZE(prefix), data, (size_t)size);
    }
    return key;
}

/* The name ``path`` shows under its parent, as (parent, name); Py_None for no entry. */
static PyObject *dirent_of(PyObject *path, PyObject *landmarks, PyObject *special_dirent) {
    Py_ssize_t length = PyUnicode_GET_LENGTH(path);
    Py_ssize_t slash = PyUnicode_FindChar(path, '/', 0, length, -1);
    if (slash == -2)
        return NULL;
    PyObject *parent = PyUnicode_Substring(path, 0, slash < 0 ? 0 : slash);
    PyObject *base = PyUnicode_Substring(path, slash + 1, length);
    if (parent == NULL || base == NULL) {
        Py_XDECREF(parent);
        Py_XDECREF(base);
        return NULL;
    }
    int hidden = PyUnicode_GET_LENGTH(base) >= 4 && PyUnicode_READ_CHAR(base, 0) == '.'
                 && PyUnicode_READ_CHAR(base, 1) == 'w' && PyUnicode_READ_CHAR(base, 2) == 'h'
                 && PyUnicode_READ_CHAR(base, 3) == '.';
    if (!hidden && PyUnicode_GET_LENGTH(parent) == 0) {
        hidden = PySequence_Contains(landmarks, base);
        if (hidden < 0) {
            Py_DECREF(parent);
            Py_DECREF(base);
            return NULL;
        }
    }
    if (hidden) {
        Py_DECREF(parent);
        Py_DECREF(base);
        return PyObject_CallOneArg(special_dirent, path);
    }
    PyObject *shown = PyTuple_Pack(2, parent, base);
    Py_DECREF(parent);
    Py_DECREF(base);
    return shown;
}

static PyObject *dirent_key(PyObject *parent_keys, PyObject *shown) {
    if (!PyTuple_Check(shown) || PyTuple_GET_SIZE(shown) != 2) {
        PyErr_SetString(PyExc_TypeError, "a dirent is (parent, name)");
        return NULL;
    }
    PyObject *prefix = PyDict_GetItemWithError(parent_keys, PyTuple_GET_ITEM(shown, 0));
    if (prefix == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(shown, 0));
        return NULL;
    }
    if (!PyBytes_Check(prefix)) {
        PyErr_SetString(PyExc_TypeError, "a parent key is bytes");
        return NULL;
    }
    PyObject *name = PyUnicode_AsEncodedString(PyTuple_GET_ITEM(shown, 1), "utf-8", "surrogateescape");
    if (name == NULL)
        return NULL;
    PyObject *key = joined_key(prefix, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
    Py_DECREF(name);
    return key;
}

/* The parent whose key the last plain name used: names of one directory mostly come together. */
typedef struct {
    PyObject *path; /* an ASCII path of that parent's, which keeps the text compared alive */
    Py_ssize_t length;
    PyObject *key;
} LastParent;

/* The dirent key of an ASCII ``path`` under a parent, its name no whiteout, without building the
 * (parent, name) strings; NULL without an error set when ``path`` is not such a name (the general
 * way, `dirent_of`, decides then). */
static PyObject *plain_dirent_key(LastParent *last, PyObject *parent_keys, PyObject *path) {
    if (!PyUnicode_IS_ASCII(path))
        return NULL;
    const char *text = (const char *)PyUnicode_DATA(path);
    Py_ssize_t length = PyUnicode_GET_LENGTH(path), slash = length - 1;
    while (slash >= 0 && text[slash] != '/')
        slash--;
    if (slash <= 0) /* a root entry: landmarks are the general way's */
        return NULL;
    const char *base = text + slash + 1;
    Py_ssize_t base_length = length - slash - 1;
    if (base_length >= 4 && memcmp(base, ".wh.", 4) == 0)
        return NULL;
    if (last->path == NULL || last->length != slash || memcmp(PyUnicode_DATA(last->path), text, (size_t)slash) != 0) {
        PyObject *parent = PyUnicode_Substring(path, 0, slash);
        if (parent == NULL)
            return NULL;
        PyObject *key = PyDict_GetItemWithError(parent_keys, parent);
        if (key == NULL && !PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, parent);
        Py_DECREF(parent);
        if (key == NULL)
            return NULL;
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "a parent key is bytes");
            return NULL;
        }
        Py_INCREF(path);
        Py_INCREF(key);
        Py_XSETREF(last->path, path);
        Py_XSETREF(last->key, key);
        last->length = slash;
    }
    return joined_key(last->key, base, base_length);
}

/* -- a node's attributes, from its TOC entry -------------------------------------------------- */

enum shape { PLAIN, REGULAR, DIRECTORY, SYMLINK, DEVICE };

static PyObject *name_type, *name_mode, *name_uid, *name_gid, *name_size, *name_mtime, *name_link_name,
    *name_dev_major, *name_dev_minor, *name_xattrs;

static int intern_names(void) {
    return (name_type = PyUnicode_InternFromString("type")) && (name_mode = PyUnicode_InternFromString("mode"))
        && (name_uid = PyUnicode_InternFromString("uid")) && (name_gid = PyUnicode_InternFromString("gid"))
        && (name_size = PyUnicode_InternFromString("size")) && (name_mtime = PyUnicode_InternFromString("mtime"))
        && (name_link_name = PyUnicode_InternFromString("link_name"))
        && (name_dev_major = PyUnicode_InternFromString("dev_major"))
        && (name_dev_minor = PyUnicode_InternFromString("dev_minor"))
        && (name_xattrs = PyUnicode_InternFromString("xattrs")) ? 0 : -1;
}

int long_of(PyObject *entry, PyObject *name, long long *out) {
    PyObject *value = entry_get(entry, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

PyDoc_STRVAR(encode_attr_doc,
"encode_attr(entry, kinds, mtime_max) -> bytes\n\n"
"A TOC entry's `NodeAttr` row as msgpack, flags 0 (layerbuild.py `encoded_attr_of`; what each\n"
"kind shows is metadata.py `attr_of`'s). ``kinds``: entry type -> (its st_mode type bits, its shape: 0 plain,\n"
"1 regular, 2 directory, 3 symlink, 4 device); ``mtime_max``: what a time is clamped to.");

static PyObject *encode_attr(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "encode_attr(entry, kinds: dict, mtime_max)");
        return NULL;
    }
    long long mtime_max = PyLong_AsLongLong(args[2]);
    if (mtime_max == -1 && PyErr_Occurred())
        return NULL;
    return attr_row(args[0], args[1], mtime_max);
}

PyObject *attr_row(PyObject *entry, PyObject *kinds, long long mtime_max) {
    PyObject *kind = entry_get(entry, name_type);
    if (kind == NULL)
        return NULL;
    PyObject *known = PyDict_GetItemWithError(kinds, kind);
    if (known == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, kind);
    Py_DECREF(kind);
    if (known == NULL)
        return NULL;
    if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2) {
        PyErr_SetString(PyExc_TypeError, "a kind is (type bits, shape)");
        return NULL;
    }
    long bits = PyLong_AsLong(PyTuple_GET_ITEM(known, 0)), shape = PyLong_AsLong(PyTuple_GET_ITEM(known, 1));
    if (PyErr_Occurred())
        return NULL;
    long long mode, uid, gid, mtime, size = 0, rdev = 0, nlink = shape == DIRECTORY ? 2 : 1;
    if (long_of(entry, name_mode, &mode) < 0 || long_of(entry, name_uid, &uid) < 0
        || long_of(entry, name_gid, &gid) < 0 || long_of(entry, name_mtime, &mtime) < 0)
        return NULL;
    if (mtime > mtime_max || mtime < -mtime_max) /* fields.py `file_time` */
        mtime = mtime > 0 ? mtime_max : -mtime_max;
    if (shape == REGULAR && long_of(entry, name_size, &size) < 0)
        return NULL;
    if (shape == DEVICE) {
        long long major, minor;
        if (long_of(entry, name_dev_major, &major) < 0 || long_of(entry, name_dev_minor, &minor) < 0)
            return NULL;
        if (major < 0 || major > INT_MAX || minor < 0 || minor > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "device number out of range");
            return NULL;
        }
        rdev = (long long)makedev((unsigned int)major, (unsigned int)minor);
    }
    const char *link = "";
    Py_ssize_t link_size = 0;
    PyObject *link_name = NULL, *xattrs = entry_get(entry, name_xattrs), *value = NULL;
    if (xattrs == NULL)
        return NULL;
    if (!PyDict_Check(xattrs)) {
        PyErr_SetString(PyExc_TypeError, "xattrs is a dict");
        goto done;
    }
    if (shape == SYMLINK) {
        link_name = entry_get(entry, name_link_name);
        if (link_name == NULL)
            goto done;
        PyObject *escaped = PyUnicode_AsEncodedString(link_name, "utf-8", "surrogateescape");
        if (escaped == NULL)
            goto done;
        size = PyBytes_GET_SIZE(escaped);
        Py_DECREF(escaped);
        if ((link = PyUnicode_AsUTF8AndSize(link_name, &link_size)) == NULL) /* msgpack's own: strict */
            goto done;
    }
    Py_ssize_t room = 1 + 8 * 9 + 5 + link_size + 5 + 1, position = 0;
    PyObject *key, *item;
    while (PyDict_Next(xattrs, &position, &key, &item)) {
        if (!PyUnicode_Check(key) || !PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "an xattr is str -> bytes");
            goto done;
        }
        room += 10 + PyUnicode_GET_LENGTH(key) * 4 + PyBytes_GET_SIZE(item);
    }
    value = PyBytes_FromStringAndSize(NULL, room);
    if (value == NULL)
        goto done;
    unsigned char *start = (unsigned char *)PyBytes_AS_STRING(value), *p = start;
    *p++ = 0x9a;
    p = put_ll(put_ll(put_ll(put_ll(p, bits | mode), uid), gid), size);
    p = put_ll(put_ll(put_ll(p, mtime), rdev), nlink);
    p = put_raw(p, link, link_size, 1);
    Py_ssize_t count = PyDict_GET_SIZE(xattrs);
    if (count < 16) {
        *p++ = (unsigned char)(0x80 | count);
    } else if (count <= 0xffff) {
        *p++ = 0xde;
        p = put_be(p, (uint64_t)count, 2);
    } else {
        *p++ = 0xdf;
        p = put_be(p, (uint64_t)count, 4);
    }
    position = 0;
    while (PyDict_Next(xattrs, &position, &key, &item)) {
        Py_ssize_t key_size;
        const char *key_text = PyUnicode_AsUTF8AndSize(key, &key_size);
        if (key_text == NULL) {
            Py_CLEAR(value);
            goto done;
        }
        p = put_raw(p, key_text, key_size, 1);
        p = put_raw(p, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item), 0);
    }
    *p++ = 0; /* flags */
    _PyBytes_Resize(&value, p - start); /* NULL, an error set, if it fails */
done:
    Py_XDECREF(link_name);
    Py_DECREF(xattrs);
    return value;
}

/* -- a batch of rows ----------------------------------------------------------------------------- */

PyDoc_STRVAR(encode_rows_doc,
"encode_rows(items, start, stop, node_id, layer_id, special, special_attr, hardlink_keys,\n"
"            parent_keys, landmarks, special_dirent, starts, chunk_key)\n"
"-> (node rows, dirent rows, file-chunk rows, last node id, payload bytes, chunk count)\n\n"
"The rows of ``items[start:stop]`` ((path, value) in node order, value a `_Node` tuple or a\n"
"hardlink's entry); ``node_id`` is the id of the node before them. See layerbuild.py `rows`.");

static PyObject *encode_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "encode_rows takes 13 arguments");
        return NULL;
    }
    PyObject *items = args[0], *special = args[5], *special_attr = args[6], *hardlink_keys = args[7];
    PyObject *parent_keys = args[8], *landmarks = args[9], *special_dirent = args[10];
    if (!PyList_Check(items) || !PyAnySet_Check(special) || !PyDict_Check(hardlink_keys)
        || !PyDict_Check(parent_keys)) {
        PyErr_SetString(PyExc_TypeError, "encode_rows: items is a list, special a set, the keys dicts");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), stop = PyLong_AsSsize_t(args[2]);
    long node_id = PyLong_AsLong(args[3]);
    unsigned long layer_id = PyLong_AsUnsignedLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (layer_id > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "layer id over 32 bits");
        return NULL;
    }
    Py_buffer starts;
    if (PyObject_GetBuffer(args[11], &starts, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (starts.itemsize != 8 || starts.format == NULL || strcmp(starts.format, "q") != 0) {
        PyBuffer_Release(&starts);
        PyErr_SetString(PyExc_TypeError, "starts is an array('q')");
        return NULL;
    }
    PyObject *node_rows = PyList_New(0), *dirent_rows = PyList_New(0), *chunk_rows = PyList_New(0);
    ChunkJob job = {(uint32_t)layer_id, (const int64_t *)starts.buf, starts.len / 8, args[12], chunk_rows, 0, 0};
    LastParent last = {NULL, 0, NULL};
    PyObject *result = NULL;
    if (node_rows == NULL || dirent_rows == NULL || chunk_rows == NULL)
        goto done;
    if (stop > PyList_GET_SIZE(items))
        stop = PyList_GET_SIZE(items);
    for (Py_ssize_t i = start < 0 ? 0 : start; i < stop; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(item, 0))) {
            PyErr_SetString(PyExc_TypeError, "an item is (path, value)");
            goto done;
        }
        PyObject *path = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1), *target;
        if (PyTuple_CheckExact(value)) { /* a node of its own */
            if (PyTuple_GET_SIZE(value) != 3) {
                PyErr_SetString(PyExc_TypeError, "a node is (type, attr, chunks)");
                goto done;
            }
            if (node_id >= (long)UINT32_MAX) {
                PyErr_SetString(PyExc_OverflowError, "node id over 32 bits");
                goto done;
            }
            node_id++;
            unsigned char raw[8];
            put_be(put_be(raw, layer_id, 4), (uint64_t)node_id, 4);
            target = PyBytes_FromStringAndSize((char *)raw, 8);
            if (target == NULL)
                goto done;
            PyObject *attr;
            int fix = PySet_Contains(special, path);
            if (fix < 0) {
                attr = NULL;
            } else if (fix) {
                attr = PyObject_CallFunctionObjArgs(special_attr, path, value, NULL);
            } else {
                attr = PyTuple_GET_ITEM(value, 1);
                Py_INCREF(attr);
            }
            Py_INCREF(target);
            if (append(node_rows, pair(target, attr)) < 0
                || add_chunks(&job, (uint32_t)node_id, PyTuple_GET_ITEM(value, 2)) < 0) {
                Py_DECREF(target);
                goto done;
            }
        } else { /* a hardlink: its target's node */
            target = PyDict_GetItemWithError(hardlink_keys, path);
            if (target == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetObject(PyExc_KeyError, path);
                goto done;
            }
            Py_INCREF(target);
        }
        PyObject *plain = PyUnicode_GET_LENGTH(path) > 0 ? plain_dirent_key(&last, parent_keys, path) : NULL;
        if (plain != NULL) {
            Py_INCREF(target);
            if (append(dirent_rows, pair(plain, target)) < 0) {
                Py_DECREF(target);
                goto done;
            }
        } else if (PyErr_Occurred()) {
            Py_DECREF(target);
            goto done;
        } else if (PyUnicode_GET_LENGTH(path) > 0) {
            PyObject *shown = dirent_of(path, landmarks, special_dirent);
            if (shown == NULL) {
                Py_DECREF(target);
                goto done;
            }
            int failed = 0;
            if (shown != Py_None) {
                Py_INCREF(target);
                failed = append(dirent_rows, pair(dirent_key(parent_keys, shown), target));
            }
            Py_DECREF(shown);
            if (failed) {
                Py_DECREF(target);
                goto done;
            }
        }
        Py_DECREF(target);
    }
    result = Py_BuildValue("(OOOlLL)", node_rows, dirent_rows, chunk_rows, node_id, job.payload, job.chunks);
done:
    Py_XDECREF(last.path);
    Py_XDECREF(last.key);
    PyBuffer_Release(&starts);
    Py_XDECREF(node_rows);
    Py_XDECREF(dirent_rows);
    Py_XDECREF(chunk_rows);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_rows", (PyCFunction)(void (*)(void))encode_rows, METH_FASTCALL, encode_rows_doc},
    {"encode_attr", (PyCFunction)(void (*)(void))encode_attr, METH_FASTCALL, encode_attr_doc},
    {"scan_groups", (PyCFunction)(void (*)(void))scan_groups, METH_FASTCALL, scan_groups_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lazylayer.shared.store._rowcodec",
    "A layer's metadata rows encoded in C (see shared/store/rowcodec.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__rowcodec(void) {
    fill_hex_values();
    if (intern_names() < 0 || scanloop_init() < 0)
        return NULL;
    return PyModule_Create(&module);
}
