"""systemd's notification protocol (sd_notify), for Type=notify services.

A datagram of "KEY=value" lines to the socket named in $NOTIFY_SOCKET. Small
enough to write here rather than depend on libsystemd; outside systemd (no
NOTIFY_SOCKET) every call is a no-op.
"""
from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send lines like "READY=1", "STATUS=...". Returns False if not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(lines).encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 1e6 / 2)
    except ValueError:
        return None
