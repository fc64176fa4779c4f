"""What every command of the CLI shares: the one-line error and its exit code,
and the one line naming a missing extra."""
from __future__ import annotations

import sys

import click

from skynet.extras import MissingExtra

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
