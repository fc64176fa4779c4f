"""One item of a job and how one item is transferred: the line between the job
runner (intake, item table, scheduling, windows, retries) and the transfer of
one item (sources read through HTTP, FTP or a remote; streamed into the target).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Error classes an item's row records (issue 21).
NOT_FOUND = "not_found"
FORBIDDEN = "forbidden"
TIMEOUT = "timeout"
REFUSED = "refused"
CHECKSUM = "checksum"
TOO_LARGE = "too_large"
OTHER = "other"
ERROR_CLASSES = (NOT_FOUND, FORBIDDEN, TIMEOUT, REFUSED, CHECKSUM, TOO_LARGE, OTHER)


@dataclass(frozen=True)
class Item:
    """What to fetch and where it lands."""

    source: str  # a URL (http, https, ftp), or a path under the job's source root
    dest: str  # relative path under the job's target
    size: int | None = None  # from the list or the source listing, when known
    md5: str | None = None  # hex, from the list or the source, when known
    mtime_ns: int | None = None
    mode: int | None = None


# scheme://authority of a URL whose authority has no user info, no IPv6 brackets and no
# space or control character: split by this one match as urlsplit would split it
_SCHEME_HOST = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#@\[\]\x00-\x20\x7f]*)(?=[/?#]|\Z)")


def scheme_host(source: str) -> tuple[str, str]:
    """(scheme, host[:port]) of an item's source URL, both lower-case; ("", "") for a
    path under the job's source root. The same answer as urlsplit's, for the cost of one
    regular-expression match on a plain URL: the runner asks for every item (its host's
    back-off, the scheme's source), and urlsplit cost ~3 us each time."""
    if "://" not in source:
        return "", ""
    m = _SCHEME_HOST.match(source)
    if m is not None:
        return m.group(1).lower(), m.group(2).lower()
    parts = urlsplit(source)
    return parts.scheme.lower(), parts.netloc.lower()


@dataclass(frozen=True)
class ItemResult:
    """What the target holds after an item is done."""

    size: int
    etag: str | None = None
    bytes_sent: int = 0  # bytes moved this attempt (a resumed item moves fewer)
    skipped: bool = False  # already at the target and identical: nothing moved
    meta: dict[str, str] = field(default_factory=dict)  # kept as object metadata (source url, etag, last-modified...)


class ItemFailed(Exception):
    """One item could not be transferred this attempt."""

    def __init__(self, error_class: str, text: str, *, permanent: bool, status: int | None = None) -> None:
        super().__init__(text)
        self.error_class = error_class  # one of ERROR_CLASSES
        self.permanent = permanent  # True: no retry helps (404, 410, checksum after a fresh start, too large)
        self.status = status  # the HTTP or FTP status, when there was one
        self.text = text


# transfer_item(item, ctx) -> ItemResult, raising ItemFailed; ctx is a
# connections.contract.xcon.TransferContext whose `resume` store is the item's
# own (so a killed item continues mid-file) and whose `stop` ends it at a chunk
# boundary (run windows). Built by skynet/jobs/transfer.py for a job's source
# and target.
TransferItem = Callable[..., ItemResult]
