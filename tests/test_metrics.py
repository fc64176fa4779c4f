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
