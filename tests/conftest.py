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


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("servers"))
    yield s
    s.close()
