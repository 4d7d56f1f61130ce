"""No FUSE handler raises anything but FUSEError.

Why: pyfuse3 lets any other exception out of its main loop, which takes the whole front down with
every mount it serves. Metadata comes from strangers' images and the cache can rot on disk, so a
handler can meet values nobody checked for. `guard_operations` wraps every operation a class
defines: a typed error becomes its errno, anything else EIO, each with one log line naming the
operation. Cancellation (a BaseException) passes through untouched.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from typing import Any, Callable, TypeVar

import pyfuse3

from lazylayer.shared.errors import LazyLayerError

log = logging.getLogger(__name__)

C = TypeVar("C", bound=type)


def _guarded(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except LazyLayerError as exc:
            log.warning("%s: %s", name, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed; answering EIO", name)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


def guard_operations(cls: C) -> C:
    """Wrap each pyfuse3 operation ``cls`` itself defines (class decorator)."""
    for name, fn in list(vars(cls).items()):
        if inspect.iscoroutinefunction(fn) and hasattr(pyfuse3.Operations, name):
            setattr(cls, name, _guarded(name, fn))
    return cls
