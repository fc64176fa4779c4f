"""PostgreSQL connection strings: parsed by libpq's rules, shown without secrets.

One place for what the notifier, the dashboard and the config check need to know
about a DSN (psycopg 3's `psycopg.conninfo.conninfo_to_dict`, which is libpq's
own parser): whether it holds a password, the password itself (to scrub it out
of libpq's error texts), and a description that may be logged or shown.
"""
from __future__ import annotations

import os
import re
from urllib.parse import quote

# For free text (libpq's error messages), where no DSN can be parsed: a URL's
# user:password@ part, and password=VALUE with libpq's quoting ('...') and
# backslash escapes (Hunter\ 2secret is one value).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*:)(?P<pw>[^@]*)(?=@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|(?:\\.|[^\s&\\])+)", re.I)

UNPARSABLE_DSN = "(a DSN that could not be parsed)"


def parse_dsn(dsn: str) -> dict[str, str]:
    """The DSN's keywords as libpq parses them (URLs with %-escapes and
    ?password=, keyword/value strings with quotes and backslash escapes).
    Raises ValueError when libpq cannot parse it (or psycopg is not installed)."""
    try:
        import psycopg.conninfo

        return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    except Exception:  # psycopg.ProgrammingError; its text may quote the DSN, so it is not chained
        raise ValueError("unparsable DSN") from None


def has_password(dsn: str) -> bool:
    """True if the DSN carries a password; True also when it cannot be parsed
    and looks like it might (the caller warns about secrets: err on that side)."""
    try:
        return bool(parse_dsn(dsn).get("password"))
    except ValueError:
        return "password" in dsn.lower() or "@" in dsn


def password_of(dsn: str | None) -> str | None:
    """The password libpq will send (the DSN's, else $PGPASSWORD), to scrub from error texts."""
    if not dsn:
        return os.environ.get("PGPASSWORD") or None
    try:
        return parse_dsn(dsn).get("password") or None
    except ValueError:
        return None


def redact_dsn(dsn: str | None) -> str:
    """The DSN as it may be logged or shown: postgresql://user:***@host:port/dbname.

    Built from the DSN as libpq parses it, never by editing the raw text: a
    pattern over the raw string misses some spelling libpq accepts
    (`password=Hunter\\ 2secret` came out as `*** 2secret`). Only host, port,
    dbname, user and sslmode are kept; a DSN libpq cannot parse is not echoed
    at all. "" means libpq's environment variables (PGHOST...), not shown either.
    """
    if dsn is None:
        return "(none)"
    if dsn == "":
        return "(libpq environment: PGHOST, PGUSER, ...)"
    try:
        parts = parse_dsn(dsn)
    except ValueError:
        return UNPARSABLE_DSN
    return _describe(parts)


def _describe(parts: dict[str, str]) -> str:
    """postgresql://user[:***]@host[:port][,host2[:port2]]/dbname[?sslmode=...], each part %-escaped."""
    user = quote(parts.get("user", ""), safe="")
    auth = f"{user}:***@" if "password" in parts else (f"{user}@" if user else "")
    hosts = parts.get("host", "").split(",") if parts.get("host") else []
    ports = parts.get("port", "").split(",") if parts.get("port") else []
    if len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)
    where = []
    for i in range(max(len(hosts), len(ports))):
        h = hosts[i] if i < len(hosts) else ""
        h = f"[{h}]" if ":" in h else quote(h, safe="")
        where.append(h + (f":{quote(ports[i], safe='')}" if i < len(ports) and ports[i] else ""))
    out = f"postgresql://{auth}{','.join(where)}"
    if parts.get("dbname"):
        out += "/" + quote(parts["dbname"], safe="")
    if parts.get("sslmode"):
        out += "?sslmode=" + quote(parts["sslmode"], safe="")
    return out


def scrub_text(text: str) -> str:
    """A message that may quote a DSN (a libpq error), with any password in it replaced by '***'."""
    out = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", out)
