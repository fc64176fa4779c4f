from __future__ import annotations

import pytest

from tests.servers import Servers

# Importing a server module registers its starter with Servers.
import tests.server_ftp  # noqa: E402,F401
import tests.server_http  # noqa: E402,F401
import tests.server_pg  # noqa: E402,F401
import tests.server_s3  # noqa: E402,F401
import tests.server_seaweedfs  # noqa: E402,F401
import tests.server_sshd  # noqa: E402,F401

# werkzeug's module body walks its own globals() (werkzeug/exceptions.py _find_exceptions). One
# fresh-clone run failed a test's first import of moto there with "dictionary changed size during
# iteration": what another thread importing werkzeug (flask) at the same moment would do; which thread
# was not found. Imported here, while each test process is still one thread, later imports find it whole.
import werkzeug.exceptions  # noqa: E402,F401


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("servers"))
    yield s
    s.close()


#: ./dev test's two passes: "parallel" (pytest-xdist) leaves out the tests marked serial,
#: "serial" (one at a time, after it) runs only those; unset (plain pytest), all of them.
PASS_ENV = "SKYNET_TEST_PASS"


def pytest_collection_modifyitems(config, items):
    """Tests marked `serial` assert on wall-clock timing (a rate within 10 %, a fresh session
    within 1.5 s), or lower a machine-wide inotify sysctl for a while (every daemon another
    worker starts meanwhile would get the tiny queue or watch limit): beside the parallel
    workers they would measure, or break, the neighbours, so ./dev test runs them in a pass
    of their own once the parallel one is over."""
    import os

    wanted = os.environ.get(PASS_ENV)
    if wanted not in ("parallel", "serial"):
        return
    keep, drop = [], []
    for item in items:
        (keep if (item.get_closest_marker("serial") is not None) == (wanted == "serial") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
