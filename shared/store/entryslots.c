/* TOC entry fields read straight from their slots (rowcodec.h `entry_get`).
 *
 * Why: a registration reads about 23 fields of every TOC entry from C (scanloop.c, rowcodec.c
 * `attr_row`). TOCEntry is a msgspec Struct whose fields are member descriptors over slots, and
 * PyObject_GetAttr reaches each through the generic attribute lookup (type cache, descriptor,
 * call): 2.5 % of the instructions of registering the bench's 20,869-entry rootfs. Here the first
 * entry of a type binds that type (a strong reference: its slots stay where they are), and each
 * field name its slot offset, found as the type's member descriptor of kind T_OBJECT_EX; a read
 * then does what that descriptor's __get__ does (an unset slot is an AttributeError). Any other
 * type, or a name that is not such a slot, goes through PyObject_GetAttr as before. Writes stay
 * PyObject_SetAttr: msgspec's own setattr does more than store (frozen types, GC tracking).
 */
#include "rowcodec.h"

#include <structmember.h>

#define MAX_FIELDS 32
#define CACHE_BITS 7 /* a name's place in `cache`: the top bits of its address times a large odd constant */

static PyTypeObject *bound; /* the one type whose slots are below; NULL until the first entry */
static int generic; /* whether `bound` reads attributes the generic way (else: never from slots) */
static struct field {
    PyObject *name; /* interned: compared by identity */
    Py_ssize_t offset; /* -1: not an object slot of `bound`: through PyObject_GetAttr */
} fields[MAX_FIELDS];
static int field_count;
static struct field *cache[1 << CACHE_BITS]; /* the last field seen at each place */

static struct field *bind(PyTypeObject *type, PyObject *name) {
    for (int i = 0; i < field_count; i++)
        if (fields[i].name == name)
            return &fields[i];
    if (field_count == MAX_FIELDS || !PyUnicode_CheckExact(name) || !PyUnicode_CHECK_INTERNED(name))
        return NULL;
    Py_ssize_t offset = -1;
    PyObject *descr = _PyType_Lookup(type, name); /* borrowed */
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX)
            offset = member->offset;
    }
    Py_INCREF(name);
    fields[field_count].name = name;
    fields[field_count].offset = offset;
    return &fields[field_count++];
}

/* The slot offset of ``name`` in ``entry``'s type, or -1. */
static Py_ssize_t slot_of(PyObject *entry, PyObject *name) {
    PyTypeObject *type = Py_TYPE(entry);
    if (bound == NULL) {
        Py_INCREF(type);
        bound = type;
        generic = type->tp_getattro == PyObject_GenericGetAttr;
    }
    if (type != bound || !generic)
        return -1;
    struct field **place = &cache[((uint64_t)(uintptr_t)name * 0x9E3779B97F4A7C15ULL) >> (64 - CACHE_BITS)];
    if (*place == NULL || (*place)->name != name) {
        struct field *found = bind(type, name);
        if (found == NULL)
            return -1;
        *place = found;
    }
    return (*place)->offset;
}

PyObject *entry_get(PyObject *entry, PyObject *name) {
    Py_ssize_t offset = slot_of(entry, name);
    if (offset < 0)
        return PyObject_GetAttr(entry, name);
    PyObject *value = *(PyObject **)((char *)entry + offset);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    Py_INCREF(value);
    return value;
}
