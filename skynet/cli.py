"""The command line: `python main.py --config SERVICE` and `--run-with SERVICE`.

Errors a user can fix (bad config, missing folder) print one line naming the
file, the key and the problem, and exit with code 2; never a traceback.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from connections import SERVICES
from skynet import config as configmod
from skynet.config import ConfigError

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"skynet: error: {message}", err=True)
    sys.exit(code)


def resolve_config_path(config_file: str | None, service: str) -> str:
    return os.path.abspath(os.path.expanduser(config_file)) if config_file else configmod.default_config_path(service)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "setup_service", type=click.Choice(SERVICES), metavar="SERVICE",
              help="Set up (or edit) the configuration for SERVICE (local, s3 or sftp), interactively.")
@click.option("--run-with", "run_service", type=click.Choice(SERVICES), metavar="SERVICE",
              help="Run the daemon in the foreground for SERVICE's config until SIGINT/SIGTERM.")
@click.option("--config-file", type=click.Path(dir_okay=False), envvar="SKYNET_CONFIG", show_envvar=True,
              help="Config file to use (default: $XDG_CONFIG_HOME/skynet/SERVICE.ini).")
def main(setup_service: str | None, run_service: str | None, config_file: str | None) -> None:
    """skynet keeps local folders mirrored to S3, SFTP or another folder, in real time,
    and never loses a change through crashes, reboots or outages."""
    if setup_service and run_service:
        fail("choose one of --config and --run-with")
    if setup_service:
        from skynet.wizard import run_wizard

        path = resolve_config_path(config_file, setup_service)
        try:
            run_wizard(setup_service, path)
        except ConfigError as exc:
            fail(str(exc))
        except click.Abort:
            click.echo("\naborted; nothing written", err=True)
            sys.exit(1)
        return
    if run_service:
        sys.exit(run_daemon(run_service, resolve_config_path(config_file, run_service)))
    click.echo(click.get_current_context().get_help())


def run_daemon(service: str, path: str) -> int:
    from skynet import logs
    from skynet.daemon import Daemon

    try:
        cfg = configmod.load(path, service)
        configmod.check_folders(cfg)
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_USAGE  # not reached
    logs.setup(cfg.log_level, cfg.log_file, cfg.log_format)
    logging.getLogger("skynet").info("skynet starting: %s, %d mapping(s), state in %s", path, len(cfg.mappings),
                                     cfg.state_dir)
    return Daemon(cfg).run()
