"""The setup wizard: `python main.py --config SERVICE`.

It asks for every setting with an explanation and the current value (or the
default) offered, so running it again on an existing config edits it and keeps
what the user does not change. It validates as it goes: folders exist; the
bucket or server answers; a probe object is written and removed; an SFTP host
key is shown and confirmed before it is trusted. Secrets are never echoed.
The file is written with mode 0600.

Automation: `--non-interactive` takes every answer from `--set KEY=VALUE`
(keys like `s3.bucket`, `skynet.workers`, `mapping.main.source`), the existing
config, or the default, and fails with a clear message if a required one is
missing or invalid. It trusts an SFTP server's new host key only when its
fingerprint is given (`--set sftp.host_key_fingerprint=SHA256:...`).
"""
from __future__ import annotations

import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from typing import Callable

import click

from connections import service_module
from connections.contract.xcon import LocalFile, PermanentError, TransferContext, TransientError
from skynet.config import settings as configmod
from skynet.config.settings import GLOBAL_KEYS, MAPPING_KEYS, ConfigError


class Prompter:
    """Asks a question, or answers it from presets in non-interactive mode."""

    def __init__(self, presets: dict[str, str], interactive: bool, path: str) -> None:
        self.presets = presets
        self.interactive = interactive
        self.path = path
        self.used: set[str] = set()

    def ask(self, key: str, label: str, current: str = "", *, hide: bool = False, required: bool = False,
            check: Callable[[str], None] | None = None) -> str:
        """`key` is the preset name ("s3.bucket"); `check` raises ValueError."""
        if key in self.presets:
            self.used.add(key)
            value = self.presets[key]
            try:
                if check:
                    check(value)
            except ValueError as exc:
                raise ConfigError(self.path, None, key, str(exc)) from None
            return value
        if not self.interactive:
            if required and not current:
                raise ConfigError(self.path, None, key, "required: give it with --set " + key + "=VALUE")
            if current and check:
                try:
                    check(current)
                except ValueError as exc:
                    raise ConfigError(self.path, None, key, str(exc)) from None
            return current
        while True:
            if hide:
                shown = " [keep the current one]" if current else ""
                value = click.prompt(label + shown, default="", hide_input=True, show_default=False)
                value = value or current
            else:
                value = str(click.prompt(label, default=current if current else ("" if not required else None),
                                         show_default=bool(current))).strip()
            if required and not value:
                click.echo("  this one is required")
                continue
            try:
                if check and value:
                    check(value)
            except ValueError as exc:
                click.echo(f"  {exc}; try again")
                continue
            return value

    def preset(self, key: str) -> str | None:
        """The answer given with --set KEY=VALUE (counted as used), else None:
        for answers that are checks, not questions (a host key fingerprint)."""
        if key not in self.presets:
            return None
        self.used.add(key)
        return self.presets[key]

    def confirm(self, key: str, label: str, default: bool) -> bool:
        if key in self.presets:
            self.used.add(key)
            return configmod.parse_bool(self.presets[key])
        if not self.interactive:
            return default
        return click.confirm(label, default=default)

    def say(self, text: str) -> None:
        click.echo(text)


def _existing(path: str) -> dict[str, dict[str, str]]:
    if not os.path.exists(path):
        return {}
    cp = configmod.read_ini(path)
    return {s: dict(cp[s]) for s in cp.sections()}


def _parser(keys: dict, key: str) -> Callable[[str], None]:
    return lambda v: keys[key][2](v)


def _folder(p: Prompter, key: str, label: str, current: str, must_exist: bool, avoid: str = "") -> str:
    def check(value: str) -> None:
        path = os.path.abspath(os.path.expanduser(value))
        if must_exist or _exists_or_hidden(path):
            problem = configmod.folder_problem(path)
            if problem:
                raise ValueError(problem)
        problem = configmod.overlap(avoid, path) if avoid else None
        if problem:
            raise ValueError(problem)

    value = os.path.abspath(os.path.expanduser(p.ask(key, label, current, required=True, check=check)))
    if not os.path.isdir(value):
        if p.confirm(key + ".create", f"  {value} does not exist; create it?", True):
            os.makedirs(value, exist_ok=True)
        else:
            raise ConfigError(p.path, None, key, f"{value} does not exist")
    return value


def _exists_or_hidden(path: str) -> bool:
    """False only if `path` is really missing (then the wizard offers to create
    it); a path we may not look at counts as there, so the problem is named."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


# -- per-service questions ------------------------------------------------------
def _section_asker(p: Prompter, service: str, out: dict[str, str]) -> Callable[..., None]:
    """q(key, label, **kw): ask for one key of the [service] section, explained
    by the connection's own KEYS doc, storing the answer in `out` (an empty
    answer removes the key, so the default applies)."""
    keys = service_module(service).KEYS

    def q(key: str, label: str, **kw) -> None:
        value = p.ask(f"{service}.{key}", f"{label} ({keys[key][1]})", out.get(key, keys[key][0]), **kw)
        if value:
            out[key] = value
        else:
            out.pop(key, None)

    return q


def _s3_questions(p: Prompter, svc: dict[str, str]) -> dict[str, str]:
    out = dict(svc)
    q = _section_asker(p, "s3", out)
    q("bucket", "Bucket", required=True)
    q("endpoint_url", "Endpoint URL (empty for AWS; e.g. https://minio.example:9000)")
    q("region", "Region")
    q("addressing_style", "Addressing style")
    q("prefix", "Key prefix for everything skynet writes")
    q("storage_class", "Storage class")
    q("sse", "Server-side encryption")
    if out.get("sse") == "aws:kms":
        q("sse_kms_key_id", "KMS key id")
    has_keys = bool(out.get("access_key_id"))
    p.say("Credentials: by default the standard AWS chain (environment, ~/.aws profile, instance role).")
    if p.confirm("s3.use_keys", "Type an access key here instead (stored only in this 0600 file)?", has_keys):
        q("access_key_id", "Access key id", required=True)
        secret = p.ask("s3.secret_access_key", "Secret access key (not shown)", out.get("secret_access_key", ""),
                       hide=True, required=True)
        out["secret_access_key"] = secret
        out.pop("profile", None)
    else:
        out.pop("access_key_id", None)
        out.pop("secret_access_key", None)
        q("profile", "AWS profile (empty: default chain)")
    return out


def _sftp_questions(p: Prompter, svc: dict[str, str]) -> dict[str, str]:
    mod = service_module("sftp")
    out = dict(svc)
    q = _section_asker(p, "sftp", out)

    q("host", "Server", required=True)
    q("port", "Port", check=lambda v: configmod.parse_int_range(1, 65535)(v) and None)
    q("user", "User name", required=True)
    q("known_hosts", "known_hosts file")
    _confirm_host_key(p, mod, out)
    q("key_file", "Private key file (empty: ssh-agent or password)")
    if out.get("key_file"):
        secret = p.ask("sftp.key_passphrase", "Key passphrase, if any (not shown)", out.get("key_passphrase", ""),
                       hide=True)
        if secret:
            out["key_passphrase"] = secret
    q("use_agent", "Use ssh-agent", check=lambda v: configmod.parse_bool(v) and None)
    if not out.get("key_file") and p.confirm("sftp.use_password", "Log in with a password (discouraged)?",
                                               bool(out.get("password"))):
        out["password"] = p.ask("sftp.password", "Password (not shown; stored only in this 0600 file)",
                                out.get("password", ""), hide=True, required=True)
    return out


def _confirm_host_key(p: Prompter, mod, out: dict[str, str]) -> None:
    """Show the server's host key fingerprint and trust it only if confirmed.

    Confirmed means: the fingerprint given with --set sftp.host_key_fingerprint
    matches, or (interactive only) the user says yes after seeing it. A
    --non-interactive run never trusts a key blindly: without a matching
    fingerprint it stops, naming the one to check and pass.
    """
    host, port = out["host"], int(out.get("port") or 22)
    known = os.path.expanduser(out.get("known_hosts") or mod.KEYS["known_hosts"][0])
    given = p.preset("sftp.host_key_fingerprint")
    try:
        state = host_key_status(mod, host, port, known)
    except (TransientError, OSError) as exc:
        raise ConfigError(p.path, "sftp", "host", f"cannot reach {host}:{port}: {exc}") from None
    offered = f"{state.key_type} {state.fingerprint}"
    if given is not None and not _same_fingerprint(given, state.fingerprint):
        raise ConfigError(p.path, "sftp", "host_key_fingerprint",
                          f"{host}:{port} offers {offered}, not {given.strip()}; not trusted, nothing written")
    if state.status == "known":
        p.say(f"  host key of {host}:{port} is already trusted ({state.fingerprint})")
        return
    if state.status == "changed":
        name = mod.known_hosts_name(host, port)
        raise ConfigError(p.path, "sftp", "host",
                          f"the host key of {host}:{port} CHANGED: it offers {offered}, but {known} trusts "
                          f"{', '.join(state.trusted)} for it; that can be an attack. If the server was really "
                          f"reinstalled, remove the old key (ssh-keygen -R '{name}' -f {known}), check the new "
                          f"fingerprint with its administrator and run this again")
    if given is None:
        if not p.interactive:
            p.preset("sftp.trust_host_key")  # a preset "yes" is not a fingerprint: not enough here
            raise ConfigError(p.path, "sftp", "host",
                              f"{host}:{port} offers {offered}, not trusted yet; check it with the server's "
                              f"administrator, then pass --set sftp.host_key_fingerprint={state.fingerprint}")
        p.say(f"  {host}:{port} presents a {state.key_type} host key that {known} does not know:\n"
              f"    {state.fingerprint}\n"
              "  Compare it with the server's own (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub on the server).")
        if not p.confirm("sftp.trust_host_key", "  Trust this key and add it to known_hosts?", False):
            raise ConfigError(p.path, "sftp", "host", f"host key of {host}:{port} not trusted; nothing written")
    else:
        p.say(f"  {host}:{port} offers {offered}: it matches the fingerprint given; trusting it")
    mod.trust_host_key(known, host, port, state.key)
    out["known_hosts"] = known


def _same_fingerprint(given: str, fingerprint: str) -> bool:
    """"SHA256:abc" as ssh-keygen -lf prints it (base64 padding tolerated;
    the prefix is case-insensitive, the base64 part is not)."""
    algo, _, digest = given.strip().partition(":")
    return algo.upper() == "SHA256" and digest.rstrip("=") == fingerprint.partition(":")[2] and bool(digest)


@dataclass
class HostKeyState:
    status: str  # known | unknown | changed
    key: object
    key_type: str
    fingerprint: str
    trusted: list[str]  # "type fingerprint" of each key known_hosts trusts for the host


def host_key_status(mod, host: str, port: int, known_hosts: str) -> HostKeyState:
    """What known_hosts says about the key the server presents now (the
    connection's own rules: mod.trusted_keys, mod.key_status)."""
    trusted = mod.trusted_keys(known_hosts, host, port)
    key = mod.fetch_host_key(host, port, prefer=list(trusted))
    return HostKeyState(mod.key_status(key, trusted), key, mod.key_type(key), mod.fingerprint(key),
                        [f"{mod.key_type(k)} {mod.fingerprint(k)}" for k in trusted.values()])


SERVICE_QUESTIONS = {"s3": _s3_questions, "sftp": _sftp_questions}


def _connection_problem(service: str, svc: dict[str, str]) -> str | None:
    """None if the service answers with these settings, else what is wrong."""
    # No mapping yet: connect to the bucket itself, or to the login folder.
    try:
        con = service_module(service).build(svc, "." if service == "sftp" else "")
    except ValueError as exc:
        return str(exc)
    try:
        con.connect()
    except Exception as exc:  # a bad host name can fail in odd ways (idna...): all mean "not this"
        return f"cannot connect: {exc}"
    finally:
        con.close()
    return None


def _probe(service: str, svc: dict[str, str], target: str, path: str) -> None:
    """Connect, write a probe file, read it back, remove it: the settings work."""
    con = service_module(service).build(svc, target)
    name = f".skynet-probe-{uuid.uuid4().hex[:12]}"
    try:
        con.connect()
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(b"skynet probe: safe to delete\n")
            tmp.flush()
            st = os.stat(tmp.name)
            con.send(LocalFile(tmp.name, name, st.st_size, st.st_mtime_ns, 0o600, st.st_ino), TransferContext())
        if con.stat(name) is None:
            raise PermanentError("the probe file did not arrive")
        con.delete(name)
    except (PermanentError, TransientError) as exc:
        raise ConfigError(path, service, None, f"the settings do not work: {exc}") from None
    finally:
        con.close()


def run_wizard(service: str, path: str, presets: dict[str, str] | None = None, interactive: bool = True) -> None:
    p = Prompter(presets or {}, interactive, path)
    old = _existing(path)
    if old.get("skynet", {}).get("service", service) != service:
        raise ConfigError(path, "skynet", "service", f"this file configures {old['skynet']['service']!r}, not {service!r}")
    p.say(f"skynet setup for {service}: {path}" + (" (editing: Enter keeps each current value)" if old else " (new)"))
    g = dict(old.get("skynet", {}), service=service)
    svc = dict(old.get(service, {}))
    if service in SERVICE_QUESTIONS:
        while True:
            p.say(f"\n{service} connection")
            svc = SERVICE_QUESTIONS[service](p, svc)
            problem = _connection_problem(service, svc)
            if problem is None:
                p.say("  connected")
                break
            if not p.interactive:
                raise ConfigError(path, service, None, problem)
            p.say(f"  {problem}\n  Let's try again (Enter keeps an answer).")

    names = [s[8:].strip() for s in old if s.startswith("mapping ")]
    names += sorted({k.split(".")[1] for k in p.presets if k.startswith("mapping.")} - set(names))
    mappings: dict[str, dict[str, str]] = {}
    for name in names or ["main"]:
        sec = dict(old.get(f"mapping {name}", {}))
        k = f"mapping.{name}"
        p.say(f"\nMapping {name!r}")
        sec["source"] = _folder(p, f"{k}.source", "Local folder to mirror", sec.get("source", ""), must_exist=True)
        if service == "local":
            sec["target"] = _folder(p, f"{k}.target", "Target folder (a mounted disk or share)", sec.get("target", ""),
                                    must_exist=False, avoid=sec["source"])
        else:
            label = ("Key prefix for this folder in the bucket" if service == "s3"
                     else "Remote folder (absolute, or relative to the login folder)")
            sec["target"] = p.ask(f"{k}.target", label, sec.get("target", ""), required=service == "sftp")
        sec["complete_sync"] = p.ask(f"{k}.complete_sync", "Delete on the remote what is deleted here? (yes/no)",
                                     sec.get("complete_sync", MAPPING_KEYS["complete_sync"][0]),
                                     check=_parser(MAPPING_KEYS, "complete_sync"))
        ignore = ", ".join(x.strip() for x in sec.get("ignore", "").replace("\n", ",").split(",") if x.strip())
        ignore = p.ask(f"{k}.ignore", "Extra ignore patterns, comma-separated (gitignore style)", ignore,
                       check=_parser(MAPPING_KEYS, "ignore"))
        if ignore:
            sec["ignore"] = ignore
        else:
            sec.pop("ignore", None)
        mappings[name] = sec
        try:
            service_module(service).validate(svc, sec["target"])
        except ValueError as exc:
            raise ConfigError(path, f"mapping {name}", None, str(exc)) from None

    p.say("\nDaemon settings")
    for key, label in (("workers", "Parallel workers"), ("log_level", "Log level"),
                       ("log_file", "Log file (empty: stderr, or the journal under systemd)"),
                       ("bwlimit", "Bandwidth limit (off, 2M, or a schedule like '08:00,2M 18:00,off')")):
        value = p.ask(f"skynet.{key}", f"{label}", g.get(key, GLOBAL_KEYS[key][0]), check=_parser(GLOBAL_KEYS, key))
        if value:
            g[key] = value
    state = p.ask("skynet.state_dir", "State folder (queue, Index, resume state)",
                  g.get("state_dir") or suggested_state_dir(service, path))
    g["state_dir"] = state
    unit_state = system_unit_state_dir(service, path)
    if unit_state and os.path.abspath(os.path.expanduser(state)) != unit_state:
        p.say(f"  note: under systemd, skynet@{service} may write only {unit_state} (StateDirectory=); "
              f"another folder needs ReadWritePaths= in a drop-in (systemctl edit skynet@{service})")
    unknown = set(p.presets) - p.used
    if unknown:
        raise ConfigError(path, None, sorted(unknown)[0], "not a setting the wizard knows")

    if service != "local":
        p.say("\nChecking the connection (writing and removing a probe file)...")
        for name, sec in mappings.items():
            _probe(service, svc, sec["target"], path)
        p.say("  it works")

    sections: dict[str, dict[str, str]] = {"skynet": {k: v for k, v in g.items() if v != ""}}
    if svc:
        sections[service] = svc
    for name, sec in mappings.items():
        sections[f"mapping {name}"] = sec
    configmod.write(path, sections)
    configmod.load(path, service)  # what we wrote must read back
    p.say(f"\nwrote {path} (mode 0600). " + run_hint(service, path))


#: where skynet@.service reads its config (ExecStart=... --config-file /etc/skynet/%i.ini)
#: and keeps its state (StateDirectory=skynet/%i); tests/test_systemd.py keeps them in step
SYSTEM_CONFIG_DIR = "/etc/skynet"
SYSTEM_STATE_DIR = "/var/lib/skynet"


def system_unit_state_dir(service: str, path: str) -> str | None:
    """The unit's state folder if `path` is the config skynet@SERVICE reads, else None."""
    if os.path.abspath(path) == os.path.join(SYSTEM_CONFIG_DIR, f"{service}.ini"):
        return os.path.join(SYSTEM_STATE_DIR, service)
    return None


def suggested_state_dir(service: str, path: str) -> str:
    """The state folder offered by default.

    For the system unit's config, the unit's StateDirectory=: the XDG default
    of whoever runs the wizard (/root/.local/state, or ~skynet/.local/state
    under sudo -u skynet) is read-only or out of reach under
    ProtectSystem=strict/ProtectHome=, and the daemon could not start.
    """
    return system_unit_state_dir(service, path) or configmod.default_state_dir(service)


def run_hint(service: str, path: str) -> str:
    """What to type next: the service for the unit's config, else the foreground
    command, spelled as the user called us (python main.py, or the skynet command)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    cmd = "python main.py" if prog == "main.py" else (sys.argv[0] if prog == "skynet" else "skynet")
    run = f"{cmd} --run-with {service}" + (f" --config-file {path}" if path != configmod.default_config_path(service) else "")
    if system_unit_state_dir(service, path):
        return (f"Start the service with (see README, 'Running it as a service'):\n"
                f"  sudo systemctl enable --now skynet@{service}\n"
                f"or try it in the foreground first, as the service's user:\n  sudo -u skynet {run}")
    return f"Start the daemon with:\n  {run}"
