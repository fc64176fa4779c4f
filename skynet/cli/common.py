"""What every command of the CLI shares: the one-line error and its exit code,
and the one line naming a missing extra."""
from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from skynet.extras import MissingExtra

if TYPE_CHECKING:
    from skynet.config.settings import Config, MappingConfig

EXIT_USAGE = 2  # a bad config, a bad argument: something the user can fix


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """One line on stderr, then exit: never a traceback for the user's own mistake."""
    click.echo(f"skynet: error: {message}", err=True)
    sys.exit(code)


class _NamesMissingExtra:
    """An optional part used without its extra (s3, sftp, postgres, dashboard)
    ends the command with one line saying what to install, from wherever it was found."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except MissingExtra as exc:
            fail(str(exc))
            return None  # not reached


class ExtraAware(_NamesMissingExtra, click.Command):
    """A command that names a missing extra in one line."""


class ExtraAwareGroup(_NamesMissingExtra, click.Group):
    """A command with subcommands of its own (`skynet job run`) that names a missing extra in one line."""


def config_options(f: Callable) -> Callable:
    """--config-file and --service, as every command that reads a config takes them
    (resolved by skynet.cli.main.load_for_inspection)."""
    from connections import SERVICES

    f = click.option("--service", type=click.Choice(SERVICES), metavar="SERVICE",
                     help="Which service's config to read (default: the only one that exists).")(f)
    return click.option("--config-file", type=click.Path(dir_okay=False, readable=False), envvar="SKYNET_CONFIG",
                        show_envvar=True, help="Config file to use (default: $XDG_CONFIG_HOME/skynet/SERVICE.ini).")(f)


def pick_mapping(cfg: "Config", name: str | None) -> "MappingConfig":
    """The mapping `name`, or the only one; else one line listing them. A mapping with
    several destinations is one mapping here (its files wherever they are); one of its
    destinations alone is NAME@TARGET."""
    from skynet.config.settings import top_mappings

    tops = top_mappings(cfg)
    names = ", ".join(m.name for m in tops)
    if name is None:
        if len(tops) != 1:
            fail(f"{cfg.path} has {len(tops)} mappings: say which with --mapping NAME ({names})")
        return tops[0]
    for m in tops + cfg.mappings:
        if m.name == name:
            return m
    fail(f"no mapping {name!r} in {cfg.path} (mappings: {names})")
    raise AssertionError("not reached")


def rel_in(m: "MappingConfig", path: str) -> str | None:
    """PATH (absolute under the mapping's source folder, or relative to it) as the
    path under the mapping root ('' for the root); None when an absolute PATH is not
    under it. A relative PATH that leaves the root is one line, exit 2."""
    if os.path.isabs(path):
        rel = os.path.relpath(os.path.normpath(path), os.path.abspath(m.source))
        if rel == ".." or rel.startswith("../"):
            return None
        path = rel
    rel = posixpath.normpath(path.replace(os.sep, "/")) if path else "."
    if rel == ".." or rel.startswith("../") or rel.startswith("/"):
        fail(f"{path!r} leaves the mapping's source folder")
    return "" if rel == "." else rel


def mapping_and_rel(cfg: "Config", path: str, mapping: str | None) -> tuple["MappingConfig", str]:
    """(the mapping PATH belongs to, PATH under its root): an absolute PATH picks its
    mapping; a relative one needs --mapping when the config has several."""
    from skynet.config.settings import top_mappings

    tops = top_mappings(cfg)
    if os.path.isabs(path):
        chosen = [pick_mapping(cfg, mapping)] if mapping else tops
        for m in chosen:
            rel = rel_in(m, path)
            if rel is not None:
                return m, rel
        fail(f"{path} is not under the source folder of "
             + (f"mapping {mapping!r}" if mapping else "any mapping") + f" in {cfg.path}")
    if mapping is None and len(tops) > 1:
        fail(f"{path!r} is relative and {cfg.path} has {len(tops)} mappings: say which with --mapping "
             f"({', '.join(m.name for m in tops)}), or give an absolute path")
    m = pick_mapping(cfg, mapping)
    rel = rel_in(m, path)
    assert rel is not None  # relative
    return m, rel
