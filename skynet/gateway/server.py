"""Running the gateway: waitress around the app, the expiry sweep, start-up and stop.

At start the staging folder is read back: unfinished uploads keep their offsets
(clients resume them with HEAD), finished ones still pending for a destination are
delivered again by the workers.
"""
from __future__ import annotations

import ctypes
import logging
import platform
import threading
from typing import Any

from skynet.extras import require as require_extra
from skynet.gateway.app import WHOLE_IN_MEMORY, Gateway, build_app
from skynet.gateway.deliver import Deliveries
from skynet.gateway.staging import Staging
from skynet.state.folder import StateFolder

log = logging.getLogger(__name__)

# waitress reads a whole request body before the app sees it: bodies up to this
# size stay in memory (an 8 MiB chunk, a whole small file landed from there), larger
# ones go to a temporary file.
INBUF_OVERFLOW = WHOLE_IN_MEMORY
# waitress's socket reads are 8 KiB by default: a thousand loop turns per 8 MiB chunk
RECV_BYTES = 256 << 10


# glibc's malloc gives a freed heap top back to the kernel past M_TRIM_THRESHOLD, and
# the next request body (recv pieces, waitress's BytesIO) faults those pages in again:
# 100-170 page faults per 1 MiB upload, ~0.3 CPU s/GiB of the 1,000 x 1 MiB bench.
# Freed request buffers are kept instead (up to TRIM_THRESHOLD), and allocations up
# to MMAP_THRESHOLD (glibc's largest) come from the heap, not from a fresh mmap each.
TRIM_THRESHOLD = 128 << 20
MMAP_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt(3)


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for a server of large request bodies (see above); False
    where the C library is not glibc (nothing done)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


def staging_root(cfg: Any) -> str:
    return cfg.gateway.staging_dir or StateFolder(cfg.state_dir).gateway()


def sweep_interval(expire_after: float) -> float:
    """Often enough that an upload outlives its Upload-Expires by little, at most a minute."""
    return max(0.2, min(60.0, expire_after / 4))


class GatewayServer:
    """Everything `skynet serve` runs; `run()` serves until interrupted."""

    def __init__(self, cfg: Any, host: str | None = None, port: int | None = None) -> None:
        require_extra("dashboard", "the gateway (skynet serve)")
        from waitress import create_server

        g = cfg.gateway
        self.gcfg = g
        self.staging = Staging(staging_root(cfg))
        self.deliveries = Deliveries(self.staging, [cfg.targets[n] for n in g.targets], g.retry_interval)
        self.gw = Gateway(g, self.staging, self.deliveries)
        self.app = build_app(self.gw)
        self.server = create_server(self.app, host=host or g.host, port=g.port if port is None else port,
                                    threads=g.threads, ident="skynet-gateway", asyncore_use_poll=True,
                                    max_request_body_size=g.max_chunk_size, inbuf_overflow=INBUF_OVERFLOW,
                                    recv_bytes=RECV_BYTES)
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def _sweep(self) -> None:
        interval = sweep_interval(self.gcfg.expire_after)
        while not self._stop.wait(interval):
            try:
                self.staging.sweep(self.gcfg.expire_after, self.gw.busy)
            except Exception:
                log.exception("gateway: the expiry sweep failed; tried again in %gs", interval)

    def run(self) -> None:
        keep_freed_memory()
        self.deliveries.start()
        threading.Thread(target=self._sweep, name="gateway-sweep", daemon=True).start()
        pending = self.staging.undelivered()
        log.info("gateway: listening on http://%s:%d/ (%d unfinished upload(s), %d waiting for a destination; "
                 "destinations: %s)", self.server.effective_host, self.port, len(self.staging.partial()),
                 len(pending), ", ".join(d.name for d in self.deliveries.dests))
        try:
            self.server.run()
        except KeyboardInterrupt:
            pass
        finally:
            self._stop.set()
            self.deliveries.stop()
