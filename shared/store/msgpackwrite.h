/* msgpack's encodings of the values registration writes, in the forms msgspec chooses (its
 * smallest integer form; fixstr/str8/16/32 and bin8/16/32 by length), so that rowcodec.c's rows
 * are byte for byte what `msgspec.msgpack` would write. Writers return the byte after what they
 * wrote; the caller has made room (at most 9 bytes an integer, 5 a length header). */
#ifndef LAZYLAYER_MSGPACKWRITE_H
#define LAZYLAYER_MSGPACKWRITE_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline unsigned char *put_be(unsigned char *p, uint64_t value, int bytes) {
    for (int i = bytes - 1; i >= 0; i--)
        *p++ = (unsigned char)(value >> (8 * i));
    return p;
}

/* msgpack's smallest form of an integer, as msgspec chooses it */
static inline unsigned char *put_ll(unsigned char *p, long long value) {
    if (value >= 0) {
        uint64_t u = (uint64_t)value;
        if (u < 128) { *p++ = (unsigned char)u; return p; }
        if (u <= 0xff) { *p++ = 0xcc; return put_be(p, u, 1); }
        if (u <= 0xffff) { *p++ = 0xcd; return put_be(p, u, 2); }
        if (u <= 0xffffffffULL) { *p++ = 0xce; return put_be(p, u, 4); }
        *p++ = 0xcf;
        return put_be(p, u, 8);
    }
    if (value >= -32) { *p++ = (unsigned char)(int8_t)value; return p; }
    if (value >= -128) { *p++ = 0xd0; return put_be(p, (uint64_t)value, 1); }
    if (value >= -32768) { *p++ = 0xd1; return put_be(p, (uint64_t)value, 2); }
    if (value >= INT32_MIN) { *p++ = 0xd2; return put_be(p, (uint64_t)value, 4); }
    *p++ = 0xd3;
    return put_be(p, (uint64_t)value, 8);
}

/* `put_ll` of a Python int, up to 2**64 - 1; NULL with an error set past that */
static inline unsigned char *put_int(unsigned char *p, PyObject *number) {
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(number, &overflow);
    if (overflow > 0) {
        unsigned long long big = PyLong_AsUnsignedLongLong(number);
        if (big == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        *p++ = 0xcf;
        return put_be(p, big, 8);
    }
    if (overflow < 0) {
        PyErr_SetString(PyExc_OverflowError, "int too small to encode");
        return NULL;
    }
    if (value == -1 && PyErr_Occurred())
        return NULL;
    return put_ll(p, value);
}

static inline unsigned char *put_raw(unsigned char *p, const char *data, Py_ssize_t size, int is_str) {
    if (is_str && size < 32) {
        *p++ = (unsigned char)(0xa0 | size);
    } else if (size <= 0xff) {
        *p++ = is_str ? 0xd9 : 0xc4;
        p = put_be(p, (uint64_t)size, 1);
    } else if (size <= 0xffff) {
        *p++ = is_str ? 0xda : 0xc5;
        p = put_be(p, (uint64_t)size, 2);
    } else {
        *p++ = is_str ? 0xdb : 0xc6;
        p = put_be(p, (uint64_t)size, 4);
    }
    memcpy(p, data, (size_t)size);
    return p + size;
}

#endif
