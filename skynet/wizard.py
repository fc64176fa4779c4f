"""The interactive setup: `python main.py --config SERVICE`.

It asks for each setting with its current value (or the default) offered, so
running it again on an existing config edits it and keeps what the user does
not change. It validates as it goes and writes the file with mode 0600.
"""
from __future__ import annotations

import os

import click

from connections import service_module
from skynet import config as configmod
from skynet.config import GLOBAL_KEYS, MAPPING_KEYS


def _existing(path: str) -> dict[str, dict[str, str]]:
    if not os.path.exists(path):
        return {}
    cp = configmod.read_ini(path)
    return {s: dict(cp[s]) for s in cp.sections()}


def _ask(section: dict[str, str], key: str, keys: dict, prompt: str | None = None, default: str | None = None) -> str:
    """Ask for one key, offering the current value (or `default`, or the
    documented default); re-ask until the value parses."""
    documented, doc, parse = keys[key]
    current = section.get(key, default if default is not None else documented)
    current = " ".join(current.split()) if "\n" in current else current  # multi-line ignore lists
    while True:
        value = click.prompt(f"{prompt or key} ({doc})", default=current, show_default=True)
        value = str(value).strip()
        if value == "" and not default:
            return value
        try:
            parse(value)
        except ValueError as exc:
            click.echo(f"  {exc}; try again")
            continue
        return value


def _ask_folder(label: str, current: str, must_exist: bool) -> str:
    while True:
        value = click.prompt(label, default=current or None)
        path = os.path.abspath(os.path.expanduser(value.strip()))
        if os.path.isdir(path):
            return path
        if os.path.exists(path):
            click.echo(f"  {path} is not a folder")
            continue
        if must_exist:
            click.echo(f"  {path} does not exist")
            continue
        if click.confirm(f"  {path} does not exist; create it?", default=True):
            os.makedirs(path, exist_ok=True)
            return path


def run_wizard(service: str, path: str) -> None:
    old = _existing(path)
    click.echo(f"skynet setup for {service}: {path}" + (" (editing)" if old else " (new)"))
    g = dict(old.get("skynet", {}))
    g["service"] = service
    mod = service_module(service)
    svc = dict(old.get(service, {}))
    if hasattr(mod, "wizard"):
        svc = mod.wizard(svc)  # the connection asks for its own settings

    mapping_names = [s[8:].strip() for s in old if s.startswith("mapping ")] or ["main"]
    mappings: dict[str, dict[str, str]] = {}
    for name in mapping_names:
        section = dict(old.get(f"mapping {name}", {}))
        click.echo(f"\nMapping {name!r}")
        section["source"] = _ask_folder("Local folder to mirror", section.get("source", ""), must_exist=True)
        if service == "local":
            while True:
                target = _ask_folder("Target folder (a mounted disk or share)", section.get("target", ""), must_exist=False)
                s = section["source"]
                if target == s or target.startswith(s.rstrip("/") + "/") or s.startswith(target.rstrip("/") + "/"):
                    click.echo("  the target and the source overlap; that would loop")
                    continue
                break
            section["target"] = target
        else:
            section["target"] = click.prompt("Remote folder or prefix", default=section.get("target", "") or None)
        section["complete_sync"] = _ask(section, "complete_sync", MAPPING_KEYS, "Delete on the remote what is deleted here?")
        section["ignore"] = _ask(section, "ignore", MAPPING_KEYS, "Extra ignore patterns, comma-separated", default="")
        section["ignore"] = ", ".join(p.strip() for p in section["ignore"].replace("\n", ",").split(",") if p.strip())
        if not section["ignore"]:
            section.pop("ignore")
        mappings[name] = section
        try:
            mod.validate(svc, section["target"])
        except ValueError as exc:
            raise configmod.ConfigError(path, f"mapping {name}", None, str(exc))

    click.echo("\nDaemon settings")
    g["workers"] = _ask(g, "workers", GLOBAL_KEYS, "Parallel workers")
    g["state_dir"] = _ask(g, "state_dir", GLOBAL_KEYS, "State folder", default=g.get("state_dir") or configmod.default_state_dir(service))
    g["log_level"] = _ask(g, "log_level", GLOBAL_KEYS, "Log level")
    g["log_file"] = _ask(g, "log_file", GLOBAL_KEYS, "Log file (empty: stderr)", default=g.get("log_file", ""))
    g = {k: v for k, v in g.items() if v != ""}

    sections: dict[str, dict[str, str]] = {"skynet": g}
    if svc:
        sections[service] = svc
    for name, sec in mappings.items():
        sections[f"mapping {name}"] = sec
    configmod.write(path, sections)
    configmod.load(path, service)  # what we wrote must read back
    click.echo(f"\nwrote {path} (mode 0600). Start the daemon with:\n  python main.py --run-with {service}"
               + (f" --config-file {path}" if path != configmod.default_config_path(service) else ""))
