/* What the two halves of the _rowcodec module share: rowcodec.c (rows laid out as bytes) and
 * scanloop.c (the registration's per-entry loop). */
#ifndef LAZYLAYER_ROWCODEC_H
#define LAZYLAYER_ROWCODEC_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* ``entry.<name>`` (a new reference, or NULL with an error set), read straight from its slot when
 * the name is an object slot of the entry's type (entryslots.c); ``name`` interned. */
PyObject *entry_get(PyObject *entry, PyObject *name);

/* ``entry.<name>`` as a long long (rowcodec.c); -1 with an error set when it is not one. */
int long_of(PyObject *entry, PyObject *name, long long *out);

/* A TOC entry's `NodeAttr` row as msgpack (rowcodec.c; `encode_attr` in Python). */
PyObject *attr_row(PyObject *entry, PyObject *kinds, long long mtime_max);

/* scanloop.c */
int scanloop_init(void);
PyObject *scan_groups(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
extern const char scan_groups_doc[];

#endif
