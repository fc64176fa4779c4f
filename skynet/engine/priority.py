"""Lowering the daemon's own CPU and I/O priority, so sync never starves the machine.

Called first thing at start-up: on Linux both settings are per thread and new
threads inherit them, so every worker started afterwards runs at the lowered
priority. It only ever lowers (never raises what systemd's Nice= or the user
already set).
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

_IOPRIO_SYSCALL = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "i686": 289}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS = {"best-effort": 2, "idle": 3}
_IOPRIO_CLASS_SHIFT = 13


def lower(nice: int, io_class: str) -> None:
    if nice > 0:
        try:
            current = os.getpriority(os.PRIO_PROCESS, 0)
            if current < nice:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:
            log.warning("cannot lower the CPU priority to nice %d: %s", nice, exc)
    if io_class in _IOPRIO_CLASS:
        number = _IOPRIO_SYSCALL.get(platform.machine())
        if number is None:
            log.info("I/O priority not supported on %s; left as it is", platform.machine())
            return
        # best-effort at its lowest level (7); idle has no levels
        value = (_IOPRIO_CLASS[io_class] << _IOPRIO_CLASS_SHIFT) | (7 if io_class == "best-effort" else 0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, value) != 0:
            log.warning("cannot set the I/O priority class to %s: %s", io_class, os.strerror(ctypes.get_errno()))


def current_io_class() -> str:
    """For tests and --status: the calling thread's I/O class, as ionice names it."""
    number = _IOPRIO_SYSCALL.get(platform.machine())
    if number is None:
        return "unknown"
    libc = ctypes.CDLL(None, use_errno=True)
    value = libc.syscall(number + 1, _IOPRIO_WHO_PROCESS, 0)  # ioprio_get follows ioprio_set
    return {0: "none", 1: "realtime", 2: "best-effort", 3: "idle"}.get(value >> _IOPRIO_CLASS_SHIFT, "unknown")
