"""Issue 21: jobs reach PostgreSQL through the notifier and show on the dashboard
(counts by status, rate, ETA, failures by class); a real PostgreSQL (tests/server_pg.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from skynet.reporting import pgschema
from skynet.reporting.notifier import Notifier
from tests.harness import REPO
from tests.server_pg import pg_or_skip
from tests.test_dashboard import login, running_dashboard
from tests.test_notifier import q

STATE = {"name": "urls", "source": "urls:/data/list.txt", "target": "in", "bytes": 4096, "rate": 12.5,
         "counts": {"queued": 90, "running": 2, "done": 5, "failed": 3}, "eta_seconds": 7.36, "running": True,
         "errors": {"not_found": 2, "timeout": 1}, "secret": "never sent"}


@pytest.fixture
def pg(servers):
    return pg_or_skip(servers)


def test_a_jobs_state_is_upserted_latest_wins(pg, tmp_path):
    dsn = pg.fresh_db("jobs")
    n = Notifier(dsn, "h", "s3", "h/s3/x/job/urls", str(tmp_path / "spool"), "t")
    n.job(STATE)
    n.job({**STATE, "counts": {**STATE["counts"], "done": 6, "queued": 89}})
    assert n.flush(20)
    n.close()
    conn = pg.connect(dsn.rsplit("/", 1)[1])
    (row,) = q(conn, "SELECT daemon_id, name, source, counts, errors, bytes, rate, eta, running FROM skynet.jobs")
    assert row == ("h/s3/x/job/urls", "urls", "urls:/data/list.txt", {"queued": 89, "running": 2, "done": 6, "failed": 3},
                   {"not_found": 2, "timeout": 1}, 4096, 12.5, pytest.approx(7.36), True)
    assert q(conn, "SELECT max(version) FROM skynet.schema_version") == [(pgschema.LATEST,)]
    conn.close()


def test_the_dashboard_shows_jobs(pg, tmp_path):
    dsn = pg.fresh_db("jobsdash")
    n = Notifier(dsn, "alpha.example", "s3", "alpha/s3/1/job/urls", str(tmp_path / "spool"), "t")
    n.job(STATE)
    assert n.flush(20)
    with running_dashboard(dsn=dsn) as base:
        s = login(base)
        data = s.get(base + "/api/status").json()
        page = s.get(base + "/").text
    n.close()
    (j,) = data["jobs"]
    assert (j["host"], j["name"], j["counts"], j["errors"], j["rate"], j["running"]) == (
        "alpha.example", "urls", STATE["counts"], STATE["errors"], 12.5, True)
    assert '<table id="jobs">' in page and "secret" not in str(data)


def test_job_run_reports_to_postgres(pg, tmp_path):
    dsn = pg.fresh_db("jobsrun")
    lst = tmp_path / "l.txt"
    lst.write_text("http://h/a\nhttp://h/missing-b\nhttp://h/c\n")
    (tmp_path / "t").mkdir()
    p = tmp_path / "local.ini"
    p.write_text(f"[skynet]\nservice = local\nstate_dir = {tmp_path / 'state'}\nnotify_dsn = {dsn}\n"
                 f"daemon_id = box\n\n[job m]\nsource = urls:{lst}\ntarget = {tmp_path / 't'}\n")
    res = subprocess.run([sys.executable, "-m", "tests.jobs_fake", str(p), "m", str(tmp_path / "f.log"), "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    conn = pg.connect(dsn.rsplit("/", 1)[1])
    rows = q(conn, "SELECT daemon_id, name, counts, errors, running FROM skynet.jobs")
    assert rows == [("box/job/m", "m", {"queued": 0, "running": 0, "done": 2, "failed": 1}, {"not_found": 1}, False)]
    assert q(conn, "SELECT id FROM skynet.daemons") == [("box/job/m",)]
    conn.close()
    assert (tmp_path / "state" / "jobs" / "m.notifier").is_dir()
