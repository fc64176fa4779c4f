"""Configuration: one INI file per service, holding one or more mappings.

    [skynet]            daemon-wide settings (GLOBAL_KEYS)
    [local] / [s3] / [sftp]
                        the connection's settings (the KEYS of its module)
    [mapping NAME]      one local folder -> one remote root (MAPPING_KEYS), or
                        -> several destinations (`targets = a, b`): the mapping
                        becomes one lane per destination, `NAME@a`, `NAME@b`
    [target NAME]       a named destination: a service, a root on it and that
                        service's keys (TARGET_KEYS + the KEYS of its module);
                        mappings (`targets`) and `skynet serve` ([gateway]
                        targets) send to them
    [gateway]           the upload gateway, `skynet serve` (GATEWAY_KEYS)

Every key is listed below with its default and meaning; config/*.ini and the
README are written from the same tables. Unknown sections and keys are errors
(a typo must not silently turn an option off), and each error names the file,
the section, the key and the problem.
"""
from __future__ import annotations

import configparser
import os
import pwd
import stat as statmod
from dataclasses import dataclass, field
from typing import Any, Callable

from connections import SERVICES, service_module
from skynet.state.atomicfile import write_atomic
from skynet.watch.ignore import validate_pattern
from skynet.transfer.throttle import validate_bwlimit, validate_window
from skynet.versions.retention import DEFAULT_MAX_AGE, DAY, Policy, parse_age, parse_keep
from skynet.config.values import (
    LOG_LEVELS,
    _str,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_durations,
    parse_int_range,
    parse_level,
    parse_path,
    parse_patterns,
    parse_seconds,
    parse_size_range,
)

class ConfigError(Exception):
    """A configuration problem, already phrased for the user."""

    def __init__(self, path: str, section: str | None, key: str | None, problem: str) -> None:
        where = path
        if section:
            where += f": [{section}]"
        if key:
            where += f" {key}"
        super().__init__(f"{where}: {problem}")


Key = tuple[str, str, Callable[[str], Any]]  # default, doc, parser


def parse_host_names(v: str) -> list[str]:
    """Host names (or name:port, [v6]:port), comma- or line-separated."""
    out = []
    for item in v.replace(",", "\n").split():
        if any(c in item for c in "/@?#") or (item.count(":") > 1 and not item.startswith("[")):
            raise ValueError(f"{item!r} is not a host name or host:port")
        out.append(item)
    return out


def parse_names(v: str) -> list[str]:
    """Section names (of [target NAME]), comma- or line-separated."""
    out = [item.strip() for item in v.replace(",", "\n").splitlines() if item.strip()]
    for item in out:
        if not _name_ok(item):
            raise ValueError(f"expected names of [target NAME] sections, got {item!r}")
    return out


GLOBAL_KEYS: dict[str, Key] = {
    "service": ("", "which connection this file configures: local, s3 or sftp (not needed when every mapping names its targets)", parse_choice(*SERVICES)),
    "state_dir": ("", "folder for the queue, the Index and resume state (default: $XDG_STATE_HOME/skynet/<service>, or .../targets without a service)", parse_path),
    "workers": ("8", "actions run in parallel (per mapping, unless the mapping sets its own)", parse_int_range(1, 256)),
    "max_attempts": ("5", "tries of one action on transient errors before it is recorded as failed", parse_int_range(1, 1000)),
    "backoff_cap": ("60", "longest wait, in seconds, between reconnection attempts", parse_seconds),
    "stop_timeout": ("20", "seconds SIGTERM waits for running actions before checkpointing them", parse_seconds),
    "poll_interval": ("30", "while some folders cannot be watched (inotify limit), rescan this often, in seconds", parse_seconds),
    "settle_seconds": ("1.0", "quiet time before a created/modified file with no close event is sent", parse_seconds),
    "late_grace": ("60", "after a kill -9 or power loss, seconds the remote must be reachable again before the paths the dead run was syncing are checked once more (a request of that run may land late)", parse_seconds),
    "bwlimit": ("off", "bandwidth limit for all transfers, bytes/s with k/M/G, or a schedule: '08:00,2M 18:00,off' (Mon-Fri 08:00,512k ...)", validate_bwlimit),
    "nice": ("10", "CPU priority the daemon lowers itself to (0 = leave as started, 19 = lowest)", parse_int_range(0, 19)),
    "io_class": ("idle", "I/O priority class the daemon sets for itself: idle, best-effort or none (leave as started)", parse_choice("idle", "best-effort", "none")),
    "progress_interval": ("30", "seconds between progress summary lines while a backlog runs (when stderr is not a terminal)", parse_seconds),
    "log_level": ("INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL", parse_level),
    "log_file": ("", "write the log to this file (rotated) instead of stderr; e.g. ~/.local/state/skynet/skynet.log", parse_path),
    "log_format": ("text", "text or json", parse_choice("text", "json")),
    "metrics_port": ("0", "serve Prometheus metrics (actions, bytes, failures, queue depth, latency, job items) on this port at /metrics, without login; 0: off", parse_int_range(0, 65535)),
    "metrics_host": ("127.0.0.1", "address the metrics ports listen on (metrics_port, dashboard_metrics_port); anything but loopback exposes mapping and job names to the network", _str),
    "dashboard_metrics_port": ("0", "with --dashboard: serve the fleet's figures from PostgreSQL (daemons, queues, jobs' items by state and failures by class) for Prometheus on this port at /metrics, without login; 0: off", parse_int_range(0, 65535)),
    "notify_dsn": ("", "PostgreSQL that receives every action for the dashboard: postgresql://user:password@host:5432/db, or 'env' for libpq's PGHOST/PGUSER/PGPASSWORD/PGPASSFILE variables; empty: no notifications", _str),
    "jobs_dsn": ("", "PostgreSQL that holds the item tables of jobs run by many machines (`skynet job submit`, `skynet worker`): postgresql://user:password@host:5432/db, or 'env' for libpq's PGHOST/PGUSER/PGPASSWORD/PGPASSFILE variables; empty: each job's items stay in the state folder and only `job run` runs them", _str),
    "notify_sslmode": ("", "TLS for that connection: disable, allow, prefer, require, verify-ca or verify-full (empty: libpq's default or PGSSLMODE)", parse_choice("", "disable", "allow", "prefer", "require", "verify-ca", "verify-full")),
    "notify_retention_days": ("14", "days of events kept in PostgreSQL; older ones are deleted in small batches, hourly", parse_int_range(1, 3650)),
    "notify_heartbeat": ("10", "seconds between heartbeats (queue depth, in flight, failed per mapping); the dashboard flags a daemon silent for 3 of them", parse_seconds),
    "notify_spool_mb": ("64", "cap, in MiB, of the local spool kept while PostgreSQL is unreachable (oldest progress rows are dropped first, with a warning)", parse_int_range(1, 1 << 20)),
    "daemon_id": ("", "this daemon's name on the dashboard (default: HOST/SERVICE/hash of state_dir)", _str),
    "dashboard_password_hash": ("", "scrypt hash of the dashboard's login password (python -m skynet.dashboard hash-secret)", _str),
    "dashboard_token_hash": ("", "hash of a token for `Authorization: Bearer` on the dashboard's JSON endpoints (python -m skynet.dashboard new-token)", _str),
    "dashboard_hosts": ("", "host names the dashboard answers to, comma-separated (name, or name:port); others get 400, against DNS rebinding (default: the listen address and localhost)", parse_host_names),
}

MAPPING_KEYS: dict[str, Key] = {
    "source": ("", "the local folder to mirror (required)", parse_path),
    "target": ("", "where it goes: a folder (local), a key prefix (s3) or a remote folder (sftp) (required for local and sftp, unless targets is set)", _str),
    "targets": ("", "instead of target: several destinations, the [target NAME] sections it goes to, comma-separated; each keeps its own queue, Index, resume state, failed actions and versions, and shows as NAME@TARGET", parse_names),
    "placement": ("all", "with targets: all (every file to every destination) or most-free (each new file to the one destination with most free space, where it then stays)", parse_choice("all", "most-free")),
    "complete_sync": ("no", "also delete on the remote what is deleted locally (an exact mirror)", parse_bool),
    "ignore": ("", "extra gitignore-style patterns, one per line or comma-separated", parse_patterns),
    "default_ignores": ("yes", "also ignore editor swap/temp files, partial downloads and skynet's own files", parse_bool),
    "max_delete": ("1000", "a start-up scan deletes at most this many remote files and folders (more, or all because the source is empty, needs --allow-mass-delete)", parse_int_range(0, 2**62)),
    "follow_symlinks": ("no", "copy what symbolic links point to (otherwise links are skipped and logged)", parse_bool),
    "workers": ("", "actions run in parallel for this mapping (default: [skynet] workers)", parse_int_range(1, 256)),
    "versions": ("no", "keep what the mirror overwrites, deletes or moves onto: the bucket's own versions where S3 versioning is on, else a hidden .skynet-versions area under the target", parse_bool),
    "versions_keep": ("staggered", "which kept versions pruning leaves, per file: staggered (one per 30 s for the first hour, one per hour for the first day, one per day up to versions_max_age), a count (10: the newest 10) or an age (90d; also s, m, h, w); the newest version and the deletion records that end a kept version are never removed", parse_keep),
    "versions_max_age": (DEFAULT_MAX_AGE, "with versions_keep = staggered: versions older than this are removed (30d; also s, m, h, w)", parse_age),
}


TARGET_KEYS: dict[str, Key] = {
    "service": ("", "which connection: local, s3 or sftp (required); the section also takes that service's keys (its table below)", parse_choice(*SERVICES)),
    "root": ("", "where on it: a folder (local), a key prefix under the bucket's prefix (s3) or a remote folder (sftp) (required for local and sftp)", _str),
    "capacity": ("", "for a mapping's placement = most-free: the most this destination may hold (k/M/G/T); its free space is this minus what it holds, or the disk's free space if that is less (S3 has no free space to ask: without capacity it is placed last)", parse_size_range(1, 1 << 62)),
}

GATEWAY_KEYS: dict[str, Key] = {
    "targets": ("", "the [target NAME] sections every finished upload lands in, comma-separated (required)", parse_names),
    "host": ("127.0.0.1", "address `skynet serve` listens on (put a TLS reverse proxy in front of anything but localhost)", _str),
    "port": ("8770", "port it listens on", parse_int_range(0, 65535)),
    "max_upload_size": ("64GiB", "largest upload accepted (Upload-Length); more is refused with 413", parse_size_range(1, 1 << 50)),
    "max_chunk_size": ("64MiB", "largest request body (one PATCH, or a POST with data); more is refused with 413 before it is read in. waitress reads a body whole before anything can look at it, token included: this bounds what a stranger can make the gateway buffer", parse_size_range(1 << 20, 1 << 40)),
    "max_uploads_in_flight": ("64", "unfinished uploads at once; one more is refused with 429 until one finishes, is terminated or expires", parse_int_range(1, 100_000)),
    "expire_after": ("86400", "seconds an unfinished upload is kept after its last chunk (Upload-Expires); then the sweep removes it", parse_seconds),
    "staging_dir": ("", "folder for unfinished uploads and deliveries still pending (default: gateway/ in state_dir); on the same disk as state_dir is best", parse_path),
    "token_hash": ("", "hash of the token clients send as `Authorization: Bearer` (python -m skynet.dashboard new-token) (required)", _str),
    "threads": ("16", "requests served at once", parse_int_range(1, 1024)),
    "retry_interval": ("30", "seconds between attempts to land a finished upload in a destination that was down", parse_seconds),
}


JOB_SOURCE_KINDS = ("urls", "local", "s3", "sftp", "config")


def parse_job_source(v: str) -> str:
    """A job's source: `urls:PATH` (a list of URLs), `local:DIR` (a tree),
    `s3:bucket/prefix`, `sftp://[user@]host[:port]/path` or `config:FILE` (another
    config's service and target). Paths of lists and trees are made absolute here,
    so a job means the same whatever folder `job run` starts in."""
    v = v.strip()
    kind, sep, rest = v.partition(":")
    if not sep or kind not in JOB_SOURCE_KINDS or not rest.strip("/"):
        raise ValueError(f"expected urls:PATH, local:DIR, s3:BUCKET/PREFIX, sftp://HOST/PATH or config:FILE, got {v!r}")
    if kind == "sftp" and not rest.startswith("//"):
        raise ValueError(f"expected sftp://HOST/PATH, got {v!r}")
    if kind in ("urls", "local", "config"):
        return f"{kind}:{parse_path(rest)}"
    return v


JOB_KEYS: dict[str, Key] = {
    "source": ("", "what to copy (required): urls:PATH (one URL per line, or CSV/TSV with a header naming url and optionally path, size, md5), local:DIR (a tree, uploaded once), s3:BUCKET/PREFIX, sftp://HOST/PATH or config:FILE (another config's service and target)", parse_job_source),
    "target": ("", "where items land on this config's service: a folder (local, sftp) or a key prefix (s3)", _str),
    "workers": ("", "items transferred in parallel (default: [skynet] workers)", parse_int_range(1, 1024)),
    "max_attempts": ("3", "tries of one item on transient errors (timeouts, refused connections, 5xx) before it fails for good; 404, 410, checksum and too_large fail at once", parse_int_range(1, 1000)),
    "retry_after": ("30s,5m,10m,30m,60m", "waits before the 2nd, 3rd... try of an item (the last one repeats)", parse_durations),
    "window": ("", "when the job may run, bwlimit's timetable syntax with ranges: 'Mon-Fri 20:00-06:00 Sat,Sun 00:00-24:00' (or '20:00,on 06:00,off'); outside it no item starts and transfers in flight pause at a chunk boundary, to continue when it opens (empty: always)", validate_window),
    "bwlimit": ("off", "bandwidth limit of this job, as [skynet] bwlimit", validate_bwlimit),
    "verify": ("yes", "check each item's size and MD5 where the list or the source gives them (a mismatch fails the item with error class checksum)", parse_bool),
    "timeout": ("30s", "an attempt fails as a timeout when the source sends nothing for this long (connecting: 10s at most)", parse_duration),
    "batch_size": ("1000", "items per batch `skynet job submit` queues for workers (with [skynet] jobs_dsn): a worker takes a batch at a time", parse_int_range(1, 1_000_000)),
    "on_existing": ("skip", "an item already at the target: skip (leave it when identical: same size, and same MD5 or mtime; else replace it) or overwrite (always send)", parse_choice("skip", "overwrite")),
}


@dataclass
class TargetConfig:
    """One [target NAME] section: a destination, as the connection modules build it."""

    name: str
    service: str
    root: str
    options: dict[str, str] = field(default_factory=dict)  # the service's own keys, raw (its module parses them)
    capacity: int = 0  # bytes it may hold, for placement = most-free (0: not set)

    def build(self) -> Any:
        """A connection (XCon) to this destination, not yet connected."""
        return service_module(self.service).build(self.options, self.root)


@dataclass
class GatewayConfig:
    """The [gateway] section (`skynet serve`)."""

    targets: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8770
    max_upload_size: int = 64 << 30
    max_chunk_size: int = 64 << 20
    max_uploads_in_flight: int = 64
    expire_after: float = 86400.0
    staging_dir: str = ""
    token_hash: str = ""
    threads: int = 16
    retry_interval: float = 30.0


@dataclass
class JobConfig:
    """One [job NAME] section: a bounded set of items copied to this config's service."""

    name: str
    source: str
    target: str
    workers: int = 8
    max_attempts: int = 3
    retry_after: list[float] = field(default_factory=lambda: [30.0, 300.0, 600.0, 1800.0, 3600.0])
    window: str = ""
    bwlimit: str = "off"
    verify: bool = True
    on_existing: str = "skip"
    timeout: float = 30.0
    batch_size: int = 1000

    @property
    def source_kind(self) -> str:
        """urls, local, s3, sftp or config."""
        return self.source.partition(":")[0]

    @property
    def source_path(self) -> str:
        """What follows the kind: a path for urls/local/config, bucket/prefix, //host/path."""
        return self.source.partition(":")[2]


@dataclass
class MappingConfig:
    name: str
    source: str
    target: str
    complete_sync: bool = False
    ignore: list[str] = field(default_factory=list)
    default_ignores: bool = True
    follow_symlinks: bool = False
    max_delete: int = 1000
    workers: int = 8
    versions: bool = False
    versions_keep: Policy = field(default_factory=Policy)
    versions_max_age: int = 30 * DAY  # nanoseconds
    # A lane: one destination of a mapping with several (`targets`). Its name is
    # NAME@TARGET; it syncs like a mapping of its own, on its target's service.
    service: str = ""  # the lane's service ('' for a plain mapping: the file's)
    options: dict[str, str] | None = None  # the lane's service keys (None: the file's [SERVICE] section)
    pool: str = ""  # the [mapping NAME] the lane belongs to ('' for a plain mapping)
    destination: str = ""  # the lane's [target NAME]
    placement: str = "all"  # the pool's placement: all or most-free
    capacity: int = 0  # the lane's target's capacity (0: not set)

    @property
    def mapping(self) -> str:
        """The [mapping NAME] this syncs (a lane's pool, else its own name)."""
        return self.pool or self.name


LANE_SEP = "@"


def lane_name(mapping: str, target: str) -> str:
    """The name a mapping's destination goes by: in the state folder, --status,
    --failed, the notifier and the dashboard."""
    return f"{mapping}{LANE_SEP}{target}"


def service_of(cfg: "Config", m: MappingConfig) -> str:
    """The service mapping (or lane) `m` sends to."""
    return m.service or cfg.service


def connection_for(cfg: "Config", m: MappingConfig) -> Any:
    """A new connection (XCon) to mapping (or lane) `m`'s remote root, not yet connected."""
    options = cfg.service_options if m.options is None else m.options
    return service_module(service_of(cfg, m)).build(options, m.target)


def lanes_of(cfg: "Config", mapping: str) -> list[MappingConfig]:
    """The lanes of [mapping `mapping`] (one per destination), or [] if it has one target."""
    return [m for m in cfg.mappings if m.pool == mapping]


def pool_mapping(cfg: "Config", mapping: str) -> MappingConfig | None:
    """[mapping `mapping`] with several destinations, as a whole (to read its files
    and versions wherever they are); None when it has no lanes. Its `pool` is its own
    name and its `destination` is empty."""
    import dataclasses

    lanes = lanes_of(cfg, mapping)
    if not lanes:
        return None
    return dataclasses.replace(lanes[0], name=mapping, target="", service="", options=None, destination="")


def top_mappings(cfg: "Config") -> list[MappingConfig]:
    """The config's [mapping NAME]s as the user wrote them: a plain mapping as it is,
    one with several destinations as a whole (pool_mapping), not lane by lane."""
    out: list[MappingConfig] = []
    for m in cfg.mappings:
        if not m.pool:
            out.append(m)
        elif m is lanes_of(cfg, m.pool)[0]:
            pool = pool_mapping(cfg, m.pool)
            assert pool is not None
            out.append(pool)
    return out


@dataclass
class Config:
    path: str
    service: str
    state_dir: str
    workers: int = 8
    max_attempts: int = 5
    backoff_cap: float = 60.0
    stop_timeout: float = 20.0
    settle_seconds: float = 1.0
    poll_interval: float = 30.0
    late_grace: float = 60.0
    bwlimit: str = "off"
    progress_interval: float = 30.0
    nice: int = 10
    io_class: str = "idle"
    log_level: str = "INFO"
    log_file: str = ""
    log_format: str = "text"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    dashboard_metrics_port: int = 0
    notify_dsn: str = ""
    jobs_dsn: str = ""
    notify_sslmode: str = ""
    notify_retention_days: int = 14
    notify_heartbeat: float = 10.0
    notify_spool_mb: int = 64
    daemon_id: str = ""
    dashboard_password_hash: str = ""
    dashboard_token_hash: str = ""
    dashboard_hosts: list[str] = field(default_factory=list)
    service_options: dict[str, str] = field(default_factory=dict)
    mappings: list[MappingConfig] = field(default_factory=list)
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    gateway: GatewayConfig | None = None
    jobs: list[JobConfig] = field(default_factory=list)
    # set from the command line, not the file: let a start-up scan delete
    # more than max_delete files (or all of them) this once
    allow_mass_delete: bool = False


def default_config_path(service: str) -> str:
    import platformdirs  # here, not at the top: a daemon given --config-file and a state_dir never needs it

    return os.path.join(platformdirs.user_config_dir("skynet"), f"{service}.ini")


def default_state_dir(service: str) -> str:
    """$STATE_DIRECTORY under systemd (StateDirectory=), else the XDG state folder."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    import platformdirs

    return os.path.join(platformdirs.user_state_dir("skynet"), service)


def _parse_section(path: str, section: str, items: dict[str, str], keys: dict[str, Key]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in items.items():
        if key not in keys:
            known = ", ".join(sorted(keys))
            raise ConfigError(path, section, key, f"unknown key (known keys: {known})")
        try:
            out[key] = keys[key][2](raw)
        except ValueError as exc:
            raise ConfigError(path, section, key, str(exc)) from None
    return out


def read_ini(path: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except FileNotFoundError:
        raise ConfigError(path, None, None, "no such config file (create one with: python main.py --config SERVICE)") from None
    except PermissionError:
        raise ConfigError(path, None, None, "cannot read the config file: permission denied" + _owner_hint(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(path, None, None, f"line {exc.lineno}: a key before any [section] header") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(path, exc.section, None, f"line {exc.lineno}: section appears twice") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(path, exc.section, exc.option, f"line {exc.lineno}: key appears twice") from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0] if exc.errors else (0, "")
        raise ConfigError(path, None, None, f"line {lineno}: cannot parse {line.strip()!r}") from None
    except configparser.Error as exc:
        raise ConfigError(path, None, None, str(exc).splitlines()[0]) from None
    return cp


def load(path: str, service: str | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError."""
    path = os.path.abspath(os.path.expanduser(path))
    cp = read_ini(path)
    # What sends to the file's own service: a job, or a mapping with one `target` (a
    # mapping with `targets` goes to its [target NAME] sections' services instead).
    own = [s for s in cp.sections() if s.startswith("job ") or (s.startswith("mapping ") and "targets" not in cp[s])]
    lanes_only = not own and any(s.startswith("mapping ") for s in cp.sections())
    if "skynet" not in cp and "gateway" not in cp and not lanes_only:
        raise ConfigError(path, "skynet", None, "missing section (it must at least say: service = local|s3|sftp)")
    g = _parse_section(path, "skynet", dict(cp["skynet"]) if "skynet" in cp else {}, GLOBAL_KEYS)
    file_service = g.get("service") or service
    if not file_service and (own or not (lanes_only or "gateway" in cp)):
        raise ConfigError(path, "skynet", "service", "missing (local, s3 or sftp)" + (
            f": [{own[0]}] sends to it (or give that mapping targets = NAME, ... of [target NAME] sections)"
            if own and own[0].startswith("mapping ") else ""))
    if service and file_service != service:
        raise ConfigError(path, "skynet", "service", f"this file configures {file_service!r}, not {service!r}")
    # A file with only [target NAME] and [gateway] sections (for `skynet serve`) needs no service of its own.
    mod = service_module(file_service) if file_service else None
    cfg = Config(path=path, service=file_service or "",
                 state_dir=g.get("state_dir") or default_state_dir(file_service or ("targets" if lanes_only else "gateway")))
    for k in ("workers", "max_attempts", "backoff_cap", "stop_timeout", "settle_seconds", "poll_interval", "late_grace", "bwlimit", "progress_interval", "nice", "io_class", "log_level", "log_file", "log_format",
              "metrics_port", "metrics_host", "dashboard_metrics_port",
              "notify_dsn", "jobs_dsn", "notify_sslmode", "notify_retention_days", "notify_heartbeat", "notify_spool_mb",
              "daemon_id", "dashboard_password_hash", "dashboard_token_hash", "dashboard_hosts"):
        if k in g:
            setattr(cfg, k, g[k])
    pools: dict[str, tuple[MappingConfig, list[str]]] = {}  # mappings with several destinations
    for section in cp.sections():
        if section == "skynet":
            continue
        if section.startswith("target ") and section[7:].strip():
            target = _parse_target(path, section, dict(cp[section]))
            cfg.targets[target.name] = target
            continue
        if section == "gateway":
            cfg.gateway = _parse_gateway(path, dict(cp[section]))
            continue
        if section in SERVICES:
            if section != file_service:
                raise ConfigError(path, section, None, f"settings for {section!r} in a {file_service!r} config")
            opts = dict(cp[section])
            for key, raw in opts.items():
                if mod is None or key not in mod.KEYS:
                    known = ", ".join(sorted(mod.KEYS))
                    raise ConfigError(path, section, key, f"unknown key (known keys: {known})")
            cfg.service_options = opts
            continue
        if section.startswith("mapping ") and section[8:].strip():
            name = section[8:].strip()
            m = _parse_section(path, section, dict(cp[section]), MAPPING_KEYS)
            if not m.get("source"):
                raise ConfigError(path, section, "source", "missing: which local folder to mirror?")
            if "targets" in m:
                if "target" in m:
                    raise ConfigError(path, section, "targets", "give either target (one destination) or targets "
                                      "(several), not both")
            elif not m.get("target") and file_service != "s3":
                raise ConfigError(path, section, "target", "missing: where should the files go?")
            elif "placement" in m:
                raise ConfigError(path, section, "placement", "only with targets (several destinations)")
            mc = MappingConfig(name=name, source=m["source"], target=m.get("target", ""), workers=cfg.workers)
            for k in ("complete_sync", "ignore", "default_ignores", "follow_symlinks", "max_delete", "workers",
                      "versions", "versions_keep", "versions_max_age", "placement"):
                if k in m:
                    setattr(mc, k, m[k])
            if not _name_ok(name):
                raise ConfigError(path, section, None, "mapping names may hold letters, digits, '-', '_' and '.' only")
            if "targets" in m:
                pools[name] = (mc, m["targets"])
            else:
                cfg.mappings.append(mc)
            continue
        if section.startswith("job ") and section[4:].strip():
            cfg.jobs.append(_job(path, section, dict(cp[section]), cfg, file_service))
            continue
        raise ConfigError(path, section, None, "unknown section (expected [skynet], [%s], [mapping NAME], "
                          "[job NAME], [target NAME] or [gateway])" % (file_service or "SERVICE"))
    for name, (mc, targets) in pools.items():
        cfg.mappings += _lanes(path, mc, targets, cfg.targets)
    if not cfg.mappings and not cfg.jobs and cfg.gateway is None:
        raise ConfigError(path, None, None, "no [mapping NAME], [job NAME] or [gateway] section: nothing to do")
    if cfg.gateway is not None:
        for name in cfg.gateway.targets:
            if name not in cfg.targets:
                known = ", ".join(sorted(cfg.targets)) or "none"
                raise ConfigError(path, "gateway", "targets", f"no [target {name}] section (targets defined: {known})")
    # Let the connection validate its own settings now, not at the first upload.
    for m in cfg.mappings:
        if m.pool:
            continue  # a lane: its [target NAME] section was validated with its own service
        assert mod is not None  # mappings need a service (checked above)
        try:
            mod.validate(cfg.service_options, m.target)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            if problem:
                sect = "mapping " + m.name if key == "target" else file_service
                raise ConfigError(path, sect, key, problem) from None
            raise ConfigError(path, file_service, None, str(exc)) from None
    for j in cfg.jobs:
        try:
            mod.validate(cfg.service_options, j.target)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            raise ConfigError(path, f"job {j.name}" if key == "target" else file_service, key if problem else None,
                              problem or str(exc)) from None
    return cfg


def _lanes(path: str, mc: MappingConfig, targets: list[str], known: dict[str, TargetConfig]) -> list[MappingConfig]:
    """A mapping with several destinations as its lanes, one per [target NAME]:
    each syncs like a mapping of its own (state, queue, Index, failed actions,
    versions), to its target's service and root."""
    import dataclasses

    sect = f"mapping {mc.name}"
    if not targets:
        raise ConfigError(path, sect, "targets", "empty: name the [target NAME] sections it goes to")
    seen: set[str] = set()
    out = []
    for t in targets:
        if t in seen:
            raise ConfigError(path, sect, "targets", f"{t!r} is named twice")
        seen.add(t)
        if t not in known:
            names = ", ".join(sorted(known)) or "none"
            raise ConfigError(path, sect, "targets", f"no [target {t}] section (targets defined: {names})")
        tc = known[t]
        out.append(dataclasses.replace(mc, name=lane_name(mc.name, t), target=tc.root, service=tc.service,
                                       options=dict(tc.options), pool=mc.name, destination=t,
                                       capacity=tc.capacity))
    return out


def _name_ok(name: str) -> bool:
    return name.replace("-", "").replace("_", "").replace(".", "").isalnum()


def _parse_target(path: str, section: str, items: dict[str, str]) -> TargetConfig:
    """A [target NAME] section: `service` and `root` from TARGET_KEYS, every other key
    the service's own (checked and parsed by its connection module, as for [s3])."""
    name = section[7:].strip()
    if not _name_ok(name):
        raise ConfigError(path, section, None, "target names may hold letters, digits, '-', '_' and '.' only")
    own = {k: v for k, v in items.items() if k in TARGET_KEYS}
    parsed = _parse_section(path, section, own, TARGET_KEYS)
    svc = parsed.get("service")
    if not svc:
        raise ConfigError(path, section, "service", "missing (local, s3 or sftp)")
    mod = service_module(svc)
    options = {k: v for k, v in items.items() if k not in TARGET_KEYS}
    for key in options:
        if key not in mod.KEYS:
            known = ", ".join(sorted(set(mod.KEYS) | set(TARGET_KEYS)))
            raise ConfigError(path, section, key, f"unknown key for a {svc} target (known keys: {known})")
    root = parsed.get("root", "")
    if not root and svc != "s3":
        raise ConfigError(path, section, "root", "missing: where on it should the files go?")
    try:
        mod.validate(options, root)
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        if problem:
            raise ConfigError(path, section, "root" if key == "target" else key, problem) from None
        raise ConfigError(path, section, None, str(exc)) from None
    return TargetConfig(name=name, service=svc, root=root, options=options, capacity=parsed.get("capacity", 0))


def _parse_gateway(path: str, items: dict[str, str]) -> GatewayConfig:
    g = _parse_section(path, "gateway", items, GATEWAY_KEYS)
    out = GatewayConfig(**g)
    if not out.targets:
        raise ConfigError(path, "gateway", "targets", "missing: which [target NAME] sections do uploads land in?")
    if len(set(out.targets)) != len(out.targets):
        raise ConfigError(path, "gateway", "targets", "a target is named twice")
    if not out.token_hash:
        raise ConfigError(path, "gateway", "token_hash", "missing: make one with python -m skynet.dashboard new-token")
    return out


def _job(path: str, section: str, items: dict[str, str], cfg: Config, service: str) -> JobConfig:
    """One [job NAME] section, checked: ConfigError naming the file, the section and the key."""
    name = section[4:].strip()
    if not _name_ok(name):
        raise ConfigError(path, section, None, "job names may hold letters, digits, '-', '_' and '.' only")
    j = _parse_section(path, section, items, JOB_KEYS)
    if not j.get("source"):
        raise ConfigError(path, section, "source", "missing: what to copy (urls:PATH, local:DIR, s3:..., sftp://...)?")
    if not j.get("target") and service != "s3":
        raise ConfigError(path, section, "target", "missing: where should the items go?")
    job = JobConfig(name=name, source=j["source"], target=j.get("target", ""), workers=cfg.workers)
    for k in ("workers", "max_attempts", "retry_after", "window", "bwlimit", "verify", "on_existing", "timeout", "batch_size"):
        if k in j:
            setattr(job, k, j[k])
    return job


def job(cfg: Config, name: str) -> JobConfig:
    """The job `name` of `cfg`; ConfigError listing the jobs there are."""
    for j in cfg.jobs:
        if j.name == name:
            return j
    known = ", ".join(j.name for j in cfg.jobs) or "none"
    raise ConfigError(cfg.path, f"job {name}", None, f"no such section (jobs in this file: {known})")


# Settings whose value is a secret (the connection's credentials), by section.
SECRET_SERVICE_KEYS = ("secret_access_key", "password", "key_passphrase")


def secret_keys(cfg: Config) -> list[str]:
    """The settings of `cfg` that hold a secret: credentials, a DSN with a
    password, the dashboard's hashes (a scrypt hash can be attacked offline)."""
    found = [f"[{cfg.service}] {k}" for k in SECRET_SERVICE_KEYS if cfg.service_options.get(k, "").strip()]
    found += [f"[target {t.name}] {k}" for t in cfg.targets.values() for k in SECRET_SERVICE_KEYS
              if t.options.get(k, "").strip()]
    if cfg.notify_dsn and _dsn_has_password(cfg.notify_dsn):
        found.append("[skynet] notify_dsn")
    if cfg.jobs_dsn and _dsn_has_password(cfg.jobs_dsn):
        found.append("[skynet] jobs_dsn")
    found += [f"[skynet] {k}" for k in ("dashboard_password_hash", "dashboard_token_hash") if getattr(cfg, k)]
    if cfg.gateway is not None and cfg.gateway.token_hash:
        found.append("[gateway] token_hash")
    return found


def _dsn_has_password(dsn: str) -> bool:
    from skynet.reporting.pgdsn import has_password

    return has_password(dsn)


def exposed_secrets_warning(cfg: Config) -> str | None:
    """One line when the file holds secrets and its group or others may read
    it, with the fix; None otherwise. A warning, not an error: refusing to
    start would break running setups for what the operator fixes in a second."""
    try:
        mode = statmod.S_IMODE(os.stat(cfg.path).st_mode)
    except OSError:
        return None
    keys = secret_keys(cfg) if mode & 0o044 else []
    if not keys:
        return None
    return (f"{cfg.path} holds secrets ({', '.join(keys)}) and is readable by "
            f"{'group and others' if (mode & 0o044) == 0o044 else 'group' if mode & 0o040 else 'others'} "
            f"(mode {mode:04o}): chmod 600 {cfg.path}")


def check_folders(cfg: Config) -> None:
    """Checks that need the disk (source folders exist, no loops) before the daemon
    mirrors. ConfigError."""
    if not cfg.mappings:
        raise ConfigError(cfg.path, None, None, "no [mapping NAME] section: the daemon has nothing to mirror "
                          "(a [job NAME] runs with: skynet job run NAME)")
    # Each mapping owns its prefix: clean-up of abandoned uploads and complete_sync
    # work per prefix, so prefixes in one bucket must not nest.
    seen: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for m in cfg.mappings:
        if service_of(cfg, m) != "s3":
            continue
        opts = cfg.service_options if m.options is None else m.options
        bucket = seen.setdefault((opts.get("endpoint_url", ""), opts.get("bucket", ""), opts.get("prefix", "")), [])
        t = m.target.strip("/")
        for other, ot in bucket:
            if t == ot or t.startswith(ot + "/") or ot.startswith(t + "/") or not t or not ot:
                raise ConfigError(cfg.path, f"mapping {m.mapping}", "targets" if m.pool else "target",
                                  f"{m.target!r} overlaps mapping {other!r}'s target {ot!r} in the same bucket")
        bucket.append((m.name, t))
    for m in cfg.mappings:
        sect = f"mapping {m.mapping}"
        problem = folder_problem(m.source)
        if problem:
            raise ConfigError(cfg.path, sect, "source", problem)
        if service_of(cfg, m) == "local":
            problem = overlap(m.source, os.path.expanduser(m.target))
            if problem:
                raise ConfigError(cfg.path, sect, "targets" if m.pool else "target", problem)


def overlap(source: str, target: str) -> str | None:
    """Why mirroring folder `source` into local folder `target` would turn on itself, or None.

    Real locations are compared, not spellings: a target that is a link into the source,
    a source that is a link into the target, or a bind mount of one inside the other,
    would make a mirror copy the tree into itself for ever (or delete its own source).
    So each side is resolved to its real path and identified by (st_dev, st_ino) at every
    level up to "/"; one side's identity among the other's ancestry is an overlap. A
    target that does not exist yet is judged by the folder it would be made in: its
    nearest existing ancestor (after resolving links, dangling ones included).
    """
    s, t = os.path.abspath(source), os.path.abspath(target)
    try:
        source_up = _real_ancestry(s)
        found, exists = _nearest_existing(t)
        target_up = _real_ancestry(found)
    except OSError:  # the source vanished or is out of reach: folder_problem() says so
        return None
    lexical = t == s or t.startswith(s.rstrip("/") + "/") or s.startswith(t.rstrip("/") + "/")
    how = "" if lexical else " (through a link or a mount)"
    if source_up[0] in target_up:
        what = "is the source" if exists and target_up[0] == source_up[0] else "is inside the source"
        return f"{t} {what} {s}{how}: a mirror into its own source would copy itself forever"
    if exists and target_up[0] in source_up:
        return f"{t} contains the source {s}{how}: the mirror would overwrite or delete its own source"
    return None


def _real_ancestry(path: str) -> list[tuple[int, int]]:
    """(st_dev, st_ino) of the real location of existing `path`, then of each folder above it.

    realpath() leaves no link in the path, so its parents are the real parents; a bind
    mount is still a second name for the same (device, inode) and is caught by comparing
    identities rather than names."""
    real = os.path.realpath(path)
    out: list[tuple[int, int]] = []
    while True:
        st = os.stat(real)
        out.append((st.st_dev, st.st_ino))
        parent = os.path.dirname(real)
        if parent == real:
            return out
        real = parent


def _nearest_existing(path: str) -> tuple[str, bool]:
    """(the real location of `path`, True) if it exists, else (its nearest existing real
    ancestor, False): where a folder that is not there yet would be made."""
    real = os.path.realpath(path)
    itself = True
    while True:
        try:
            os.stat(real)
            return real, itself
        except OSError:  # missing, a link loop, or not ours to look at: judge by the folder above
            parent = os.path.dirname(real)
            if parent == real:
                return real, False
            real, itself = parent, False


def user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _owner_hint(path: str) -> str:
    """' (owned by X, mode 0600: run this as X or root)', so that `skynet --status`
    on a service's config says how to get in rather than only 'permission denied'.
    When a folder on the way is what keeps us out (/etc/skynet is 0700), it is named."""
    where = path if os.access(os.path.dirname(path) or ".", os.X_OK) else unreachable_parent(path)
    try:
        st = os.stat(where or path)
        owner = pwd.getpwuid(st.st_uid).pw_name
    except (OSError, KeyError):
        return ""
    what = "" if where == path else f"{where} is "
    return (f" ({what}owned by {owner}, mode {statmod.S_IMODE(st.st_mode):04o}: run this as {owner} or root, "
            f"e.g. sudo -u {owner} ...)")


def unreachable_parent(path: str) -> str | None:
    """The first folder on the way to `path` that this user may not enter (no x bit), if any."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    current = os.sep
    for part in parts[:-1]:
        current = os.path.join(current, part)
        if os.path.isdir(current) and not os.access(current, os.X_OK):
            return current
    return None


def folder_problem(path: str) -> str | None:
    """Why this process cannot mirror the folder `path`, phrased for the user, or None.

    A folder in someone's private home (Debian 12 creates homes 0700) exists
    but is out of reach of the service user; saying "does not exist" there
    sent people looking for a typo, so the folder that blocks the way, its
    owner and mode, and the user who needs in are named instead.
    """
    user = user_name()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"folder {path!r} does not exist"
    except PermissionError:
        blocker = unreachable_parent(path) or os.path.dirname(path)
        try:
            bst = os.stat(blocker)
            owner = pwd.getpwuid(bst.st_uid).pw_name
            how = f" (owner {owner}, mode {statmod.S_IMODE(bst.st_mode):04o})"
        except (OSError, KeyError):
            how = ""
        return (f"folder {path!r} is out of reach of user {user}: {blocker}{how} does not let it in; "
                f"give {user} access to it (see README, 'Running it as a service')")
    except OSError as exc:
        return f"folder {path!r}: {exc.strerror}"
    if not statmod.S_ISDIR(st.st_mode):
        return f"{path!r} is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"folder {path!r} is not readable by user {user}"
    return None


def write(path: str, sections: dict[str, dict[str, str]], comments: dict[str, str] | None = None) -> None:
    """Write a config file with mode 0600 (it may hold secrets), atomically."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ["# skynet configuration; every key is described in config/README.md", ""]
    for name, items in sections.items():
        if comments and name in comments:
            lines.append(f"# {comments[name]}")
        lines.append(f"[{name}]")
        for k, v in items.items():
            v = str(v)
            if "\n" in v:
                v = "\n    " + "\n    ".join(x for x in v.splitlines() if x.strip())
            lines.append(f"{k} = {v}")
        lines.append("")
    write_atomic(path, "\n".join(lines), 0o600)
