"""Real servers the tests talk to, started on 127.0.0.1 by the test session.

Each server is started lazily, the first time a test asks for it, and stopped
(by the PID we started) when the session ends. See ../shared/TEST-SERVERS.md.
"""
from __future__ import annotations

import contextlib
import socket
from typing import Any, Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """Session-wide registry: `servers.get("s3")` starts the S3 server once."""

    starters: dict[str, Callable[[Any], contextlib.AbstractContextManager]] = {}

    def __init__(self, workdir) -> None:
        self.workdir = workdir
        self._stack = contextlib.ExitStack()
        self._running: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._running:
            starter = self.starters[name]
            self._running[name] = self._stack.enter_context(starter(self.workdir / name))
        return self._running[name]

    def close(self) -> None:
        self._stack.close()


def register(name: str):
    """Decorator: register a context-manager starter for server `name`."""

    def deco(fn):
        Servers.starters[name] = fn
        return fn

    return deco
