"""Issue 22 item 5 (the fleet part): the dashboard shows each job of a fleet (items by
status, failures by class, rate, ETA, paused) and each worker (host, last heartbeat,
batches held, rate), from the jobs database ([skynet] jobs_dsn), on the real PostgreSQL."""
from __future__ import annotations

from skynet.dashboard import DashboardConfig, build, new_token
from skynet.jobs.fleet import set_pause
from skynet.jobs.item import Item
from skynet.jobs.pgtable import PgItemTable
from skynet.jobs.table import DONE, FAILED, NewItem, Outcome


def test_the_dashboard_shows_the_fleets_jobs_and_workers(servers, tmp_path):
    dsn = servers.get("postgres").fresh_db("dashfleet")
    table = PgItemTable.open(dsn, "photos")
    try:
        table.add([NewItem(i, Item(f"http://h/{i}", f"f{i}")) for i in range(1, 11)], 1, {"intake": {"done": True}})
        with table.pool.connection() as c:
            c.execute("INSERT INTO skynet_jobs.workers(id, jobs, host, pid, started_at, last_heartbeat, batches_held, "
                      "done, rate) VALUES ('w1', ARRAY['photos'], 'node-1', 4242, now(), now(), 2, 6, 3.0), "
                      "('w2', ARRAY['photos'], 'node-2', 77, now(), now() - interval '10 min', 1, 1, 9.0)")
        claimed = table.claim_ids(list(range(1, 11)), 1.0)
        table.record([Outcome(c.id, DONE, 2.0, bytes=10) for c in claimed[:6]] +
                     [Outcome(claimed[6].id, FAILED, 2.0, error_class="not_found", status_code=404, error="404")])
        set_pause(table.pool, "photos", True)
    finally:
        table.close()
    token, token_hash = new_token()
    app, source = build(DashboardConfig(state_dirs=[str(tmp_path)], token_hash=token_hash, jobs_dsn=dsn))
    try:
        client = app.test_client()
        assert client.get("/api/fleet").status_code == 401
        got = client.get("/api/fleet", headers={"Authorization": f"Bearer {token}"}).get_json()
        [job] = got["jobs"]
        assert job["counts"] == {"queued": 0, "running": 3, "done": 6, "failed": 1}
        assert job["errors"] == {"not_found": 1} and job["paused"] == "operator"
        assert job["workers"] == 1 and job["rate"] == 3.0 and job["eta"] == 1.0  # the silent worker does not count
        w1, w2 = got["workers"]
        assert (w1["host"], w1["pid"], w1["batches_held"], w1["stale"]) == ("node-1", 4242, 2, False)
        assert w2["stale"] and w2["rate"] == 0.0
        page = client.get("/", headers={"Authorization": f"Bearer {token}"})
        assert page.status_code == 200 and 'id="fleet-workers"' in page.get_data(as_text=True)
        app.extensions["skynet_fleet"].close()
    finally:
        source.close()


def test_without_jobs_dsn_there_is_no_fleet_endpoint(tmp_path):
    token, token_hash = new_token()
    app, source = build(DashboardConfig(state_dirs=[str(tmp_path)], token_hash=token_hash))
    try:
        client = app.test_client()
        assert client.get("/api/fleet", headers={"Authorization": f"Bearer {token}"}).status_code == 404
        assert 'id="fleet' not in client.get("/", headers={"Authorization": f"Bearer {token}"}).get_data(as_text=True)
    finally:
        source.close()
