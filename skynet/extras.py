"""Optional parts of skynet and the pip extras that install them.

`pip install .` gives the daemon on a local folder (its embedded default); S3, SFTP,
the notifier's PostgreSQL and the web dashboard each need packages not everyone
wants, installed with an extra: `pip install 'skynet-sync[s3]'` (from a checkout,
`pip install '.[s3]'`), `[all]` for everything (pyproject.toml's
optional-dependencies hold the same names). Their imports are lazy, and each entry
point calls `require()` before it gets to them, so a missing extra is one line that
says what to install, not an ImportError traceback from deep inside.
"""
from __future__ import annotations

import importlib.util
import sys

DIST = "skynet-sync"

#: extra -> the modules it provides (what to look for to know it is installed)
EXTRAS: dict[str, tuple[str, ...]] = {
    "s3": ("boto3", "botocore"),
    "sftp": ("asyncssh",),
    "postgres": ("psycopg", "psycopg_pool"),
    "metrics": ("prometheus_client",),  # /metrics for Prometheus (metrics_port, skynet/reporting/metrics.py)
    "dashboard": ("flask", "waitress"),
    "jobs": ("urllib3",),  # HTTP(S) sources of migration jobs (skynet/jobs/http_source.py)
    "fleet": ("procrastinate", "psycopg", "psycopg_pool"),  # jobs_dsn, `skynet worker` (skynet/jobs/fleet.py)
}


class MissingExtra(Exception):
    """An optional part is used without its packages; the message says how to install them."""

    def __init__(self, extra: str, what: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{what} needs skynet's '{extra}' extra ({module} is not installed): "
            f"pip install '{DIST}[{extra}]' (from a checkout: pip install '.[{extra}]'; "
            f"with pipx: pipx install --force '.[all]')")


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (boto3 alone costs ~100 ms)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: blocked on purpose (the tests do so)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str) -> None:
    """Raise MissingExtra unless every module of `extra` is installed; `what` names
    the feature that needs it ("the dashboard", "notify_dsn")."""
    for module in EXTRAS[extra]:
        if not installed(module):
            raise MissingExtra(extra, what, module)
