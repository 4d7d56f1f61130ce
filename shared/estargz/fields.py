"""Where numbers and strings from an image enter: typed and range-checked, once.

Everything a TOC entry or a descriptor annotation says ends up in a stat reply, an inode, a file
offset or a path, and each of those has a width: uid_t and gid_t are 32 bits, a device number's
major 12 bits and minor 20 (what FUSE's 32-bit rdev carries, as the kernel encodes it), st_size and offsets a signed 64, and st_mtime_ns (seconds * 10^9) a
signed 64 too. A value past its width is refused here (a time is clamped: see `file_time`), naming the entry and the field, so no
FUSE handler or store writer downstream can overflow (a uid of 2^32 used to raise OverflowError
in lookup and readdir). Numbers written as text (annotations) must be plain ASCII digits: int()
also takes "²", " 12 " and "1_000".
"""

from __future__ import annotations

from typing import Any

from lazylayer.shared.errors import TOCError

INT64_MAX = (1 << 63) - 1
#: uid_t, gid_t, mode_t
UINT32_MAX = (1 << 32) - 1
#: a device number's major and minor as Linux (and FUSE's rdev) hold them
DEV_MAJOR_MAX = (1 << 12) - 1
DEV_MINOR_MAX = (1 << 20) - 1
#: mtimes whose st_mtime_ns fits a signed 64-bit integer (years 1678 to 2262)
MTIME_MAX = INT64_MAX // 1_000_000_000
#: digits of the largest decimal number ascii_uint accepts (INT64_MAX has 19)
_MAX_DIGITS = 19


def text_field(obj: dict[str, Any], key: str, name: str, default: str = "") -> str:
    """``obj[key]`` as a string (absent or null: ``default``) of entry ``name``."""
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise TOCError(f"entry {name!r}: {key} is {value!r}, expected a str")
    return value


def int_field(obj: dict[str, Any], key: str, name: str, maximum: int = INT64_MAX) -> int:
    """``obj[key]`` as an integer in ``[0, maximum]`` (absent or null: 0) of entry ``name``."""
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TOCError(f"entry {name!r}: {key} is {value!r}, expected an integer")
    if value < 0:
        raise TOCError(f"entry {name!r}: {key} is negative ({value})")
    if value > maximum:
        what = "over int64" if maximum == INT64_MAX else f"the largest allowed is {maximum}"
        raise TOCError(f"entry {name!r}: {key} is absurdly large ({value}, {what})")
    return value


def file_time(seconds: int) -> int:
    """``seconds`` clamped to what st_mtime_ns can carry. The TOC keeps any RFC 3339 year
    (1 to 9999, as Go writes them); a file system shows the nearest time it can hold, as ext4
    does with times past its range."""
    if -MTIME_MAX <= seconds <= MTIME_MAX:  # one comparison chain, not two calls: once per entry
        return int(seconds)  # not the decoder's int subclass, which msgpack encoders take through a hook
    return MTIME_MAX if seconds > 0 else -MTIME_MAX


def ascii_uint(text: str, maximum: int = INT64_MAX) -> int | None:
    """The value of ``text`` if it is plain ASCII digits (no sign, space, underscore or other
    script's digits) at most ``maximum``; None otherwise."""
    if not 0 < len(text) <= _MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= maximum else None
