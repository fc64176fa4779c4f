"""A file replaced by a folder of the same name, and a folder by a file, with
complete_sync: the mirror ends with the new kind only, live and across a restart
(the start-up scan), on every backend. S3 has no folders: the old key `a` must go
when `a/...` arrives, and every `a/...` key when the file `a` does.

(tests/test_folders.py runs more swap cases on the backends with folders.)
"""
from __future__ import annotations

import shutil

import pytest

from tests.backends import BACKENDS, backend_marks, enabled_backends
from tests.test_e2e import Env, w


@pytest.fixture(params=[pytest.param(n, id=n, marks=backend_marks(n, heavy=True)) for n in enabled_backends()])
def mirror(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as backend:
        e = Env(tmp_path, backend, complete_sync=True)
        yield e
        if e.daemon and e.daemon.proc and e.daemon.proc.poll() is None:
            assert e.daemon.stop() == 0, e.daemon.log_text()[-3000:]
        assert backend.leftovers() == [], "partial uploads left behind"


def _kinds(env: Env, files: list[bytes], folders: list[bytes]) -> None:
    """`files` are keys of their own and nothing is under them; `folders` hold keys and are none."""
    keys = env.remote()
    for f in files:
        assert f in keys and not any(k.startswith(f + b"/") for k in keys), sorted(keys)
    for d in folders:
        assert d not in keys and any(k.startswith(d + b"/") for k in keys), sorted(keys)


def test_file_and_folder_swap_live_and_across_a_restart(mirror):
    # Old code, on S3: the key `a` stayed beside `a/in.txt` (and the mirror never converged).
    env = mirror
    w(env.src / "a", "a file first")
    w(env.src / "b/f.txt", "a folder first")
    env.start()
    env.converge()
    (env.src / "a").unlink()
    w(env.src / "a/in.txt", "now a folder")
    shutil.rmtree(env.src / "b")
    w(env.src / "b", "now a file")
    env.converge()
    _kinds(env, [b"b"], [b"a"])
    assert env.daemon.stop() == 0
    shutil.rmtree(env.src / "a")  # and back, while stopped: the start-up scan finds both
    w(env.src / "a", "a file again")
    (env.src / "b").unlink()
    w(env.src / "b/g/deep.txt", "a folder again")
    env.start()
    env.converge()
    _kinds(env, [b"a"], [b"b"])
