"""Packaging (issue 19, item 1): `skynet --version`, the extras, the stdlib-sqlite3
fallback, and a wheel installed into a new venv running the daemon.

The optional packages are hidden from a child process by a sitecustomize.py that
sets sys.modules[name] = None for each name in $SKYNET_TEST_BLOCK: `import name`
then fails as if the package were not installed.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import skynet
from tests import install_check
from tests.harness import Daemon, one_clear_line, run_main, wait_converged, tree, write_config

BLOCKER = """\
import os
import sys

for _name in os.environ.get("SKYNET_TEST_BLOCK", "").split(","):
    if _name:
        sys.modules[_name] = None  # `import _name` now raises ImportError, as if not installed
"""

#: every package that is not a core dependency (pyproject.toml), pysqlite3 included:
#: where it has no wheel, skynet/state/sqlitelib.py falls back to the standard library's sqlite3
OPTIONAL = ("boto3", "botocore", "s3transfer", "asyncssh", "cryptography", "bcrypt", "psycopg", "psycopg_pool",
            "prometheus_client", "flask", "waitress", "werkzeug", "jinja2", "pysqlite3")


@pytest.fixture
def block(tmp_path, monkeypatch):
    """block(*names): child processes started after this cannot import `names`."""
    d = tmp_path / "blocker"
    d.mkdir()
    (d / "sitecustomize.py").write_text(BLOCKER)
    monkeypatch.setenv("PYTHONPATH", str(d))

    def set_blocked(*names: str) -> None:
        monkeypatch.setenv("SKYNET_TEST_BLOCK", ",".join(names))
        for name in names:  # the blocker itself works (else every test below proves nothing)
            res = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
            assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, (name, res.stderr)

    return set_blocked


def _python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(install_check.REPO))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_version_has_one_source():
    """main.py --version prints skynet.__version__, which pyproject.toml reads (dynamic)."""
    res = run_main("--version")
    assert (res.returncode, res.stdout) == (0, f"skynet {skynet.__version__}\n"), res
    text = (install_check.REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'version = {attr = "skynet.__version__"}' in text
    from skynet.reporting.notifier import skynet_version

    assert skynet_version() == skynet.__version__


def test_the_daemon_runs_without_any_extra_on_the_stdlib_sqlite3(tmp_path, block):
    """A `pip install .` without extras (and without pysqlite3, as where it has no
    wheel): the local daemon starts, mirrors a new file, and stops on SIGTERM."""
    block(*OPTIONAL)
    # the standard library's module, and the checkpointer's choice follows its library
    # (Debian 12's 3.40.1: WAL_RESET_FIXED is False, so the daemon below checkpoints
    # under the write lock)
    assert _python("from skynet.state.sqlitelib import sqlite3, WAL_RESET_FIXED; "
                   "print(sqlite3.__name__, WAL_RESET_FIXED == (sqlite3.sqlite_version_info >= (3, 51, 3)))") \
        == "sqlite3 True"
    assert _python("import skynet.cli.main, skynet.engine.daemon, skynet.reporting.status, skynet.cli.wizard, connections.local.con, sys; "
                   f"print(sorted(m for m in {OPTIONAL!r} if sys.modules.get(m)))") == "[]"
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "before.txt").write_text("there at start-up\n")
    cfg = write_config(tmp_path / "local.ini", "local", {"m": {"source": str(src), "target": str(dst)}},
                       tmp_path / "state")
    with Daemon(cfg) as d:
        (src / "after.txt").write_text("created while watching\n")
        wait_converged(src, lambda: tree(dst), exact=False, daemon=d)
        assert d.stop() == 0
    log = d.log_text()
    assert "Traceback" not in log, log


def _fleet_hash() -> str:
    from skynet.dashboard import hash_secret

    return hash_secret("a password")


@pytest.mark.parametrize("extra, blocked, service, args, extra_settings, service_options", [
    ("s3", ["boto3", "botocore"], "s3", ["--run-with", "s3"], {}, {"bucket": "b"}),
    ("sftp", ["asyncssh"], "sftp", ["--run-with", "sftp"], {}, {"host": "h"}),
    ("sftp", ["asyncssh"], "sftp", ["--config", "sftp", "--non-interactive"], {}, {"host": "h"}),
    ("postgres", ["psycopg"], "local", ["--run-with", "local"], {"notify_dsn": "postgresql://u@127.0.0.1:9/db"}, {}),
    ("dashboard", ["flask", "waitress"], "local", ["--dashboard", "--dashboard-port", "0"], {}, {}),
    ("postgres", ["psycopg"], "local", ["--dashboard", "--dashboard-port", "0"],
     {"notify_dsn": "postgresql://u@127.0.0.1:9/db", "dashboard_password_hash": "FLEET"}, {}),
    ("metrics", ["prometheus_client"], "local", ["--run-with", "local"], {"metrics_port": "9"}, {}),
], ids=["run-s3", "run-sftp", "wizard-sftp", "notifier", "dashboard", "fleet-dashboard", "metrics"])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, block, extra, blocked, service, args, extra_settings,
                                               service_options):
    src = tmp_path / "src"
    src.mkdir()
    settings = {"log_level": "WARNING", **{k: (_fleet_hash() if v == "FLEET" else v) for k, v in extra_settings.items()}}
    target = str(tmp_path / "dst") if service == "local" else "/data"
    cfg = write_config(tmp_path / f"{service}.ini", service, {"m": {"source": str(src), "target": target}},
                       tmp_path / "state", service_options=service_options, extra=settings)
    cfg.chmod(0o600)  # it may hold a secret: no warning line beside the error
    block(*blocked)
    res = run_main(*args, "--config-file", str(cfg))
    line = one_clear_line(res, f"'{extra}' extra", f"pip install 'skynet-sync[{extra}]'", f"{blocked[0]} is not installed")
    assert line.startswith("skynet: error: "), line


def test_the_dashboards_own_command_names_a_missing_extra(tmp_path, block):
    """`python -m skynet.dashboard serve` without Flask: one line naming the extra, exit 2
    (the main CLI's rule, for the dashboard's stand-alone entry point too)."""
    block("flask", "waitress")
    res = subprocess.run([sys.executable, "-m", "skynet.dashboard", "serve", "--port", "0",
                          "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parent.parent))
    line = one_clear_line(res, "'dashboard' extra", "pip install 'skynet-sync[dashboard]'")
    assert line.startswith("skynet dashboard: error: "), line


def test_a_wheel_installed_into_a_new_venv_runs(tmp_path):
    """Issue 19: from a clean copy of the tree, build a wheel, install it into a new venv
    (no network: its dependencies are lent by this venv), then the installed `skynet`:
    --version, --help, and the daemon on a local folder (a new file reaches the target;
    SIGTERM stops it with 0). `./dev install-check` does the same with the real
    dependencies from PyPI."""
    out = install_check.check(tmp_path, offline=True)
    venv = tmp_path / "venv"
    skynet_file, connections_file, dist_version = out["where"].split()
    assert Path(skynet_file).is_relative_to(venv) and Path(connections_file).is_relative_to(venv), out["where"]
    assert dist_version == skynet.__version__ and out["wheel"] == f"skynet_sync-{skynet.__version__}-py3-none-any.whl"
    assert out["version"] == f"skynet {skynet.__version__}\n"
    assert "Usage: skynet [OPTIONS]" in out["help"] and "--run-with SERVICE" in out["help"], out["help"]
    assert out["daemon_rc"] == "0"
    # every module and data file of the tree is in the wheel (a new subpackage is found, not listed by hand)
    (site,) = venv.glob("lib/python*/site-packages")
    tree_files = {p.relative_to(install_check.REPO) for top in ("skynet", "connections")
                  for p in (install_check.REPO / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    missing = sorted(str(p) for p in tree_files if not (site / p).is_file())
    assert not missing, f"not in the wheel: {missing}"


def test_a_job_of_urls_without_the_jobs_extra_is_one_line_naming_it(tmp_path, block):
    """HTTP(S) sources need urllib3 (the `jobs` extra): without it, `job run` says so in
    one line before any item runs (not as every item's error), exit 2."""
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a\n")
    cfg = tmp_path / "local.ini"
    cfg.write_text(f"[skynet]\nservice = local\nstate_dir = {tmp_path / 'state'}\nlog_level = WARNING\n\n"
                   f"[job j]\nsource = urls:{tmp_path / 'urls.txt'}\ntarget = {tmp_path / 'dst'}\n")
    (tmp_path / "dst").mkdir()
    block("urllib3")
    res = run_main("job", "run", "j", "--config-file", str(cfg))
    line = one_clear_line(res, "'jobs' extra", "pip install 'skynet-sync[jobs]'", "urllib3 is not installed")
    assert line.startswith("skynet: error: "), line
