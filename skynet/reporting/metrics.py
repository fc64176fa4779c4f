"""Prometheus metrics: what skynet did, for a scraper (opt-in, `metrics_port`).

The one place that defines skynet's metrics (prometheus_client, its default
registry, so the process_* and python_* metrics come with them). Three
producers feed them through the small functions below, never through the
metric objects, so labels stay consistent:

* the daemon: `on_handler_event()` from its single per-action hook
  (skynet.engine.daemon.Daemon._on_event, the same place the notifier is fed),
  and `set_mapping_state()` from its heartbeat;
* a job runner or fleet worker (`skynet job run`, `skynet worker`):
  `item_finished()` per item and `set_job_states()` with its item counts;
* any of them serves them with `start_metrics_server(host, port)`; the
  dashboard serves them on its own opt-in port too.

Every function is cheap and never raises (a metric must not break a sync),
and all of them are no-ops until `enable()` or `start_metrics_server()` ran, so a
daemon without `metrics_port` does not pay for label look-ups. Label values are
bounded: mapping, action kind, job names and error classes (an exception's
class name, never its message, so no path or secret becomes a label).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from skynet.extras import require as require_extra

log = logging.getLogger(__name__)

#: Transfer latency buckets (seconds): small files take milliseconds, large ones minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, float("inf"))
ITEM_STATES = ("queued", "running", "done", "failed")

_enabled = False
_lock = threading.Lock()
_started: dict[tuple[str, str], float] = {}  # (mapping, src) -> monotonic start of the action in flight
_STARTED_MAX = 100_000
_m: Any = None  # the metric objects, created on first enable()


class _Metrics:
    """The metric objects (created once: prometheus_client refuses a second
    registration of the same name in one registry)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.actions = Counter("skynet_actions", "Actions finished, by mapping, kind (send/delete/move) and outcome",
                               ["mapping", "action", "outcome"])
        self.bytes_sent = Counter("skynet_bytes_sent", "Bytes sent to the target", ["mapping"])
        self.failures = Counter("skynet_failures", "Failed actions by error class (the exception's type)",
                                ["mapping", "error_class"])
        self.queue_depth = Gauge("skynet_queue_depth", "Actions waiting or running", ["mapping"])
        self.in_flight = Gauge("skynet_in_flight", "Actions running", ["mapping"])
        self.failed_now = Gauge("skynet_failed_actions", "Actions parked as failed (skynet --list-failed)",
                                ["mapping"])
        self.latency = Histogram("skynet_transfer_seconds", "Seconds from an action's start to its end",
                                 ["mapping", "action"], buckets=LATENCY_BUCKETS)
        self.items = Counter("skynet_job_items", "Job items finished by this process, by status (done/failed)",
                             ["job", "status"])
        self.item_failures = Counter("skynet_job_item_failures", "Failed job items by error class",
                                     ["job", "error_class"])
        self.item_bytes = Counter("skynet_job_bytes", "Bytes of the job's items done by this process", ["job"])
        self.item_latency = Histogram("skynet_job_item_seconds", "Seconds one job item took", ["job"],
                                      buckets=LATENCY_BUCKETS)
        self.item_states = Gauge("skynet_job_item_states", "The job's items by state (whole job, as last read)",
                                 ["job", "state"])


def enable() -> None:
    """Create the metrics and start recording (idempotent)."""
    global _enabled, _m
    with _lock:
        if _m is None:
            _m = _Metrics()
        _enabled = True


def enabled() -> bool:
    return _enabled


def start_metrics_server(host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve /metrics on http://host:port in a daemon thread; returns the bound
    port (port 0: a free one). Binds 127.0.0.1 unless told otherwise: the
    figures name mappings and jobs, which is not for everyone on the network."""
    enable()
    bound = start_server(host, port).server_port
    log.info("metrics: Prometheus text on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", bound)
    return bound


def start_server(host: str, port: int, registry: Any = None) -> Any:
    """A /metrics HTTP server for `registry` (default: skynet's, the process
    default) in a daemon thread; returns the server (`.server_port`,
    `.shutdown()`), for a caller that stops it (the dashboard)."""
    from prometheus_client import REGISTRY, start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry or REGISTRY)
    return server


def from_config(cfg: Any) -> int | None:
    """The daemon's metrics: serve them on `metrics_port` (0: off) at
    `metrics_host`. Returns the port, or None when off or when the port cannot
    be bound: that is logged as an ERROR and syncing goes on (a scraper
    notices a target that is down; a sync that would not start over it helps
    nobody)."""
    port = int(getattr(cfg, "metrics_port", 0) or 0)
    if not port:
        return None
    require_extra("metrics", "metrics_port")
    host = getattr(cfg, "metrics_host", "") or "127.0.0.1"
    try:
        return start_metrics_server(host, port)
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%d (%s); no /metrics this run", host, port, exc)
        return None


def exposition() -> tuple[bytes, str]:
    """(body, content type) of the current metrics, for a web app serving its own /metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    enable()
    return generate_latest(), CONTENT_TYPE_LATEST


def error_class(error: object) -> str:
    """A bounded label for an error: the exception's class name, or the text
    before its first ':' (the form 'ClassName: message' the engine stores)."""
    if error is None:
        return ""
    if isinstance(error, BaseException):
        return type(error).__name__
    head = str(error).split(":", 1)[0].strip()
    return head if head.isidentifier() and len(head) <= 64 else "other"


# -- the daemon --------------------------------------------------------------------
def on_handler_event(mapping: str, kind: str, action: Any, info: object) -> None:
    """The daemon's per-action hook: `kind` is started/done/failed, `action` a
    uniqueq.Action (kind, src), `info` the Outcome (done) or the exception (failed)."""
    if not _enabled:
        return
    try:
        key = (mapping, action.src)
        if kind == "started":
            if len(_started) < _STARTED_MAX:
                _started[key] = time.monotonic()
            return
        t0 = _started.pop(key, None)
        action_finished(mapping, action.kind, kind,
                        nbytes=getattr(info, "bytes_sent", 0) if kind == "done" else 0,
                        seconds=None if t0 is None else time.monotonic() - t0,
                        error=info if kind == "failed" else None)
    except Exception:
        log.debug("metrics: could not record %s", kind, exc_info=True)


def action_finished(mapping: str, action: str, outcome: str, nbytes: int = 0, seconds: float | None = None,
                    error: object = None) -> None:
    """One action ended: `outcome` is done or failed."""
    if not _enabled:
        return
    try:
        _m.actions.labels(mapping, action, outcome).inc()
        if nbytes:
            _m.bytes_sent.labels(mapping).inc(nbytes)
        if outcome == "failed":
            _m.failures.labels(mapping, error_class(error)).inc()
        if seconds is not None:
            _m.latency.labels(mapping, action).observe(seconds)
    except Exception:
        log.debug("metrics: could not record an action", exc_info=True)


def set_mapping_state(mapping: str, queue_depth: int | None, in_flight: int | None, failed: int | None) -> None:
    """A mapping's queue as the daemon's heartbeat last saw it (None: unknown, left as it was)."""
    if not _enabled:
        return
    for gauge, value in ((_m.queue_depth, queue_depth), (_m.in_flight, in_flight), (_m.failed_now, failed)):
        if value is not None:
            gauge.labels(mapping).set(value)


# -- jobs and fleet workers --------------------------------------------------------
def item_finished(job: str, status: str, error_class: str | None = None, nbytes: int = 0,
                  seconds: float | None = None) -> None:
    """One job item ended (`status` done or failed; `error_class` the class the
    job table records for a failure; `nbytes` the bytes transferred)."""
    if not _enabled:
        return
    try:
        _m.items.labels(job, status).inc()
        if status == "failed":
            _m.item_failures.labels(job, error_class or "other").inc()
        if nbytes:
            _m.item_bytes.labels(job).inc(nbytes)
        if seconds is not None:
            _m.item_latency.labels(job).observe(seconds)
    except Exception:
        log.debug("metrics: could not record a job item", exc_info=True)


def set_job_states(job: str, counts: Mapping[str, int]) -> None:
    """The whole job's items by state (queued/running/done/failed), e.g. from
    `job status`'s counts; states absent from `counts` are set to 0."""
    if not _enabled:
        return
    try:
        for state in sorted(set(ITEM_STATES) | set(counts)):
            _m.item_states.labels(job, state).set(int(counts.get(state, 0) or 0))
    except Exception:
        log.debug("metrics: could not record job states", exc_info=True)


# -- the dashboard: the fleet as PostgreSQL knows it ---------------------------------
class FleetCollector:
    """Gauges read at scrape time from the dashboard's data source (its
    `status()`: the notifier's tables), so Prometheus sees every daemon and job
    that reports to the database, not just this process. A failed read is
    `skynet_fleet_up 0`, not a failed scrape."""

    def __init__(self, status: Any) -> None:
        self._status = status

    def describe(self) -> list:
        return []  # no up-front description: the families depend on the data

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("skynet_fleet_up", "1 if the dashboard could read the database at this scrape")
        try:
            data = self._status()
        except Exception as exc:
            log.warning("metrics: cannot read the fleet's status: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _daemon_families(data.get("daemons") or [])
        yield from _job_families(data.get("jobs") or [])


def _daemon_families(daemons: list[dict]) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    states = GaugeMetricFamily("skynet_fleet_daemons", "Daemons by state (running, stale: heartbeats missed, stopped)",
                               labels=["state"])
    age = GaugeMetricFamily("skynet_fleet_heartbeat_age_seconds", "Seconds since a daemon's last heartbeat",
                            labels=["daemon"])
    queue = GaugeMetricFamily("skynet_fleet_queue_depth", "Actions waiting or running, per daemon and mapping",
                              labels=["daemon", "mapping"])
    failed = GaugeMetricFamily("skynet_fleet_failed_actions", "Actions parked as failed, per daemon and mapping",
                               labels=["daemon", "mapping"])
    count = {"running": 0, "stale": 0, "stopped": 0}
    for d in daemons:
        count["stopped" if d.get("stopped") else "stale" if d.get("stale") else "running"] += 1
        if d.get("age") is not None:
            age.add_metric([str(d["id"])], float(d["age"]))
        for m in d.get("mappings") or []:
            labels = [str(d["id"]), str(m.get("name"))]
            if m.get("queue_depth") is not None:
                queue.add_metric(labels, float(m["queue_depth"]))
            if m.get("failed") is not None:
                failed.add_metric(labels, float(m["failed"]))
    for state, n in count.items():
        states.add_metric([state], n)
    yield from (states, age, queue, failed)


def _job_families(jobs: list[dict]) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    items = GaugeMetricFamily("skynet_fleet_job_items", "A job's items by state", labels=["daemon", "job", "state"])
    errors = GaugeMetricFamily("skynet_fleet_job_failures", "A job's failed items by error class",
                               labels=["daemon", "job", "error_class"])
    rate = GaugeMetricFamily("skynet_fleet_job_rate", "A job's items per second", labels=["daemon", "job"])
    nbytes = GaugeMetricFamily("skynet_fleet_job_bytes", "Bytes of a job's items done", labels=["daemon", "job"])
    eta = GaugeMetricFamily("skynet_fleet_job_eta_seconds", "Seconds a running job has left (when known)",
                            labels=["daemon", "job"])
    for j in jobs:
        who = [str(j.get("daemon_id")), str(j.get("name"))]
        for state, n in sorted((j.get("counts") or {}).items()):
            items.add_metric([*who, str(state)], float(n))
        for cls, n in sorted((j.get("errors") or {}).items()):
            errors.add_metric([*who, str(cls)], float(n))
        rate.add_metric(who, float(j.get("rate") or 0))
        nbytes.add_metric(who, float(j.get("bytes") or 0))
        if j.get("eta") is not None:
            eta.add_metric(who, float(j["eta"]))
    yield from (items, errors, rate, nbytes, eta)


def fleet_registry(status: Any) -> Any:
    """A registry of its own for the dashboard's /metrics: the fleet's gauges
    (FleetCollector over `status`, a callable returning the dashboard's status
    dict) and skynet's process metrics."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    registry.register(FleetCollector(status))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
