"""Only what pyproject.toml cannot say yet without an experimental table: two C extensions.

daemon/dircache.c (with attrcache.c, xattrless.c, layeropen.c and viewconn.c) is not a Python module but a
shared library the front loads with ctypes before pyfuse3 starts its session (daemon/dircache.py
says why and how). It is built here because pyfuse3 itself is built from source against the same
libfuse3-dev. shared/store/rowcodec.c (with scanloop.c and entryslots.c) is a plain extension
module: a layer's TOC entries applied and its metadata rows encoded at registration (layerbuild.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lazylayer.daemon._dircache",
                             sources=["daemon/dircache.c", "daemon/attrcache.c", "daemon/xattrless.c",
                                      "daemon/layeropen.c", "daemon/viewconn.c"],
                             depends=["daemon/attrcache.h", "daemon/xattrless.h", "daemon/layeropen.h", "daemon/viewconn.h"],
                             libraries=["fuse3", "dl"]),
                   Extension("lazylayer.shared.store._rowcodec",
                             sources=["shared/store/rowcodec.c", "shared/store/scanloop.c", "shared/store/entryslots.c"],
                             depends=["shared/store/msgpackwrite.h", "shared/store/rowcodec.h"])])
