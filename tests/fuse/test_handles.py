"""File handle numbers (daemon/handles.py): the serials Python hands out, and the bounded table of
the handles built for fhs daemon/layeropen.c answered in C."""

from __future__ import annotations

from lazylayer.daemon.handles import C_SERIAL, MAX_C_HANDLES, ContentHandle, Handles, inode_of

INODE = (7 << 32) | 42


def test_python_opens_never_take_the_serial_of_c_opens():
    handles = Handles()
    fhs = [handles.add(INODE, ContentHandle(b"")) for _ in range(40)]
    assert all(fh >> 60 != C_SERIAL and inode_of(fh) == INODE for fh in fhs)
    assert len(set(fhs)) == C_SERIAL  # 15 slots; later opens reuse the last one


def test_handles_of_c_opens_are_kept_most_recently_used_and_bounded():
    handles = Handles()
    fh_of = [C_SERIAL << 60 | (INODE + i) for i in range(MAX_C_HANDLES + 1)]
    for fh in fh_of[:MAX_C_HANDLES]:
        handles.put(fh, ContentHandle(b""))
    assert handles.get(fh_of[0]) is not None  # used: now the most recent
    handles.put(fh_of[-1], ContentHandle(b""))  # one too many: the least recently used goes
    assert handles.get(fh_of[1]) is None
    assert handles.get(fh_of[0]) is not None and handles.get(fh_of[-1]) is not None
