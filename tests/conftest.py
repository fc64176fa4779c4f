from __future__ import annotations

import pytest

from tests.servers import Servers


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("servers"))
    yield s
    s.close()
