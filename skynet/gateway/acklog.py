"""The acknowledged offsets of an upload that are not fsynced yet: `<id>.ack`, one line per chunk.

An answer to a PATCH must not name bytes a `kill -9` of the server could lose. Once
pwrite() returned, the bytes are in the kernel's page cache: a dead process loses
none of them, only a dead kernel (power cut, panic, reboot) does. So each
accepted chunk appends one line here (no fsync) before the answer goes out, and
the line carries the boot it was written in (/proc/sys/kernel/random/boot_id):

    [boot_id, start, end, checksum entry or null, touched]

After a restart in the same boot the lines are as true as the page cache behind
them, and the upload goes on from the last one. After a reboot they are ignored:
the fsynced record (staging.py, written by the syncer only after fdatasync of the
bytes it names) is all that counts, and the client resends from its offset.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator


def boot_id() -> str | None:
    """This kernel's boot; None where the system does not say (then no line is ever trusted)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def append(path: str, boot: str | None, start: int, end: int, entry: list | None, touched: float) -> None:
    """One accepted chunk: a single write(2) of one line (a kill cannot cut it)."""
    line = (json.dumps([boot, start, end, entry, touched]) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def replay(path: str, boot: str | None, offset: int) -> Iterator[tuple[int, list | None, float]]:
    """The chunks acknowledged in this boot that follow `offset`, in order: (end, entry, touched)."""
    if boot is None:
        return
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")[:-1]  # a last line without its newline is not complete
    except (FileNotFoundError, NotADirectoryError):
        return
    for raw in lines:
        try:
            line: Any = json.loads(raw)
            b, start, end, entry, touched = line
        except (ValueError, TypeError):
            continue
        if b == boot and start == offset and isinstance(end, int) and end > start:
            yield end, entry, float(touched)
            offset = end
