"""skynet/reporting/metrics.py: the metric definitions and the API the daemon, job
runners and fleet workers record through; served in Prometheus's text format."""
from __future__ import annotations

import urllib.request
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from skynet.reporting import metrics


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics and parse it: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return samples(text)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(got: dict, name: str, **labels: str) -> float:
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


def test_actions_items_and_states_are_served_and_parse():
    port = metrics.start_metrics_server("127.0.0.1", 0)
    before = scrape(port)
    act = SimpleNamespace(kind="send", src="a/b.txt")
    metrics.on_handler_event("mt", "started", act, None)
    metrics.on_handler_event("mt", "done", act, SimpleNamespace(bytes_sent=1234))
    metrics.on_handler_event("mt", "started", act, None)
    metrics.on_handler_event("mt", "failed", act, PermissionError("secret/path denied"))
    metrics.set_mapping_state("mt", 7, 2, 1)
    metrics.item_finished("jobm", "done", nbytes=10, seconds=0.5)
    metrics.item_finished("jobm", "failed", error_class="http_404", seconds=0.1)
    metrics.set_job_states("jobm", {"queued": 5, "done": 1, "failed": 1})
    got = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(got, name, **labels) - value(before, name, **labels)

    assert moved("skynet_actions_total", mapping="mt", action="send", outcome="done") == 1
    assert moved("skynet_actions_total", mapping="mt", action="send", outcome="failed") == 1
    assert moved("skynet_bytes_sent_total", mapping="mt") == 1234
    assert moved("skynet_failures_total", mapping="mt", error_class="PermissionError") == 1
    assert moved("skynet_transfer_seconds_count", mapping="mt", action="send") == 2
    assert value(got, "skynet_queue_depth", mapping="mt") == 7
    assert value(got, "skynet_in_flight", mapping="mt") == 2
    assert moved("skynet_job_items_total", job="jobm", status="done") == 1
    assert moved("skynet_job_item_failures_total", job="jobm", error_class="http_404") == 1
    assert moved("skynet_job_bytes_total", job="jobm") == 10
    assert moved("skynet_job_item_seconds_count", job="jobm") == 2
    assert value(got, "skynet_job_item_states", job="jobm", state="queued") == 5
    assert value(got, "skynet_job_item_states", job="jobm", state="running") == 0
    # an error's message (a path, maybe a secret) never becomes a label
    assert not any("secret" in str(k) for k in got)


def test_error_class_is_a_bounded_label():
    assert metrics.error_class(TimeoutError("x")) == "TimeoutError"
    assert metrics.error_class("ConnectionError: host down") == "ConnectionError"
    assert metrics.error_class("no such file /home/me/x: y") == "other"


def test_exposition_for_a_web_app():
    body, ctype = metrics.exposition()
    assert ctype.startswith("text/plain")
    assert b"skynet_actions_total{" in body or b"# TYPE skynet_actions_total counter" in body


# -- the daemon: metrics_port ------------------------------------------------------------
def wait_scrape(port: int, want, what: str, daemon=None, timeout: float = 30.0) -> dict:
    """Scrape until `want(samples)` holds (the daemon counts as it finishes actions)."""
    import time

    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        try:
            got = scrape(port)
        except OSError:
            got = {}
        if got and want(got):
            return got
        time.sleep(0.1)
    tail = daemon.log_text()[-3000:] if daemon is not None else ""
    raise AssertionError(f"{what}: {sorted((k, v) for k, v in got.items() if k[0].startswith('skynet_'))}\n{tail}")


def test_daemon_serves_metrics_that_move_as_files_sync(tmp_path):
    from tests.harness import Daemon, tree, wait_converged, write_config
    from tests.servers import free_port

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_bytes(b"x" * (100 + i))
    port = free_port()
    cfg = write_config(tmp_path / "c.ini", "local",
                       {"docs": {"source": str(src), "target": str(dst), "complete_sync": "yes"}}, tmp_path / "state", extra={"metrics_port": str(port), "notify_heartbeat": "0.2"})
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
        first = wait_scrape(port, lambda g: value(g, "skynet_actions_total", mapping="docs", action="send",
                                                  outcome="done") == 3, "three sends", d)
        assert value(first, "skynet_bytes_sent_total", mapping="docs") == 100 + 101 + 102
        assert value(first, "skynet_transfer_seconds_count", mapping="docs", action="send") == 3
        (src / "late.txt").write_bytes(b"y" * 1000)
        (src / "f0.txt").unlink()
        got = wait_scrape(port, lambda g: value(g, "skynet_actions_total", mapping="docs", action="delete",
                                                outcome="done") == 1
                          and value(g, "skynet_bytes_sent_total", mapping="docs") == 303 + 1000, "one more", d)
        assert value(got, "skynet_actions_total", mapping="docs", action="send", outcome="done") == 4
        wait_scrape(port, lambda g: ("skynet_queue_depth", (("mapping", "docs"),)) in g, "queue depth", d)
        assert any(k[0] == "process_cpu_seconds_total" for k in got)  # the standard process metrics come along
        assert d.stop() == 0
    assert "metrics: Prometheus text on http://127.0.0.1:" in d.log_text()
