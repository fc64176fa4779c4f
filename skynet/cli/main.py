"""The command line: `python main.py --config SERVICE` and `--run-with SERVICE`.

Errors a user can fix (bad config, missing folder) print one line naming the
file, the key and the problem, and exit with code 2; never a traceback.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from connections import SERVICES, service_module
from skynet import __version__
from skynet.config import settings as configmod
from skynet.config.settings import ConfigError

from skynet.cli.common import EXIT_USAGE, ExtraAware, fail


def resolve_config_path(config_file: str | None, service: str) -> str:
    return os.path.abspath(os.path.expanduser(config_file)) if config_file else configmod.default_config_path(service)


# Commands with a word of their own (`skynet restore ...`), each a click command in
# its own module, named "module:attribute" and imported only when used: the
# daemon's start-up never pays for them. The flags of the main command (--run-with,
# --status...) stay as they were, so existing units and scripts keep working.
SUBCOMMANDS: dict[str, str] = {
    "job": "skynet.cli.job:job",
    "restore": "skynet.cli.restore:restore_cmd",
    "versions": "skynet.cli.versions:versions",
    "serve": "skynet.cli.serve:serve",
    "worker": "skynet.cli.worker:worker",
}


def subcommand(name: str) -> click.Command:
    """The click command registered under `name`."""
    import importlib

    module, _, attr = SUBCOMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


class Command(ExtraAware):
    """The CLI's command. A first argument naming a subcommand (SUBCOMMANDS) hands
    the rest of the line to it."""

    def main(self, args=None, prog_name=None, **extra):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        if argv and argv[0] in SUBCOMMANDS:
            name = argv[0]
            return subcommand(name).main(argv[1:], prog_name=f"{prog_name or 'skynet'} {name}", **extra)
        return super().main(argv, prog_name=prog_name, **extra)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if SUBCOMMANDS:
            with formatter.section("Commands (each has --help)"):
                formatter.write_dl([(name, (subcommand(name).get_short_help_str(70))) for name in sorted(SUBCOMMANDS)])
        super().format_epilog(ctx, formatter)



@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "setup_service", type=click.Choice(SERVICES), metavar="SERVICE",
              help="Set up (or edit) the configuration for SERVICE (local, s3 or sftp), interactively.")
@click.option("--run-with", "run_service", type=click.Choice(SERVICES), metavar="SERVICE",
              help="Run the daemon in the foreground for SERVICE's config until SIGINT/SIGTERM.")
@click.option("--config-file", type=click.Path(dir_okay=False, readable=False), envvar="SKYNET_CONFIG", show_envvar=True,
              help="Config file to use (default: $XDG_CONFIG_HOME/skynet/SERVICE.ini).")
@click.option("--service", type=click.Choice(SERVICES), metavar="SERVICE",
              help="Which service's config --status/--failed/--retry-failed read (default: the only one that exists).")
@click.option("--status", "show_status", is_flag=True,
              help="Show the local daemon: queue depth, uploads in flight with progress, failed count, connection.")
@click.option("--failed", "show_failed", is_flag=True, help="List the actions that failed (error, attempts, times).")
@click.option("--retry-failed", is_flag=True, help="Queue failed actions again: all, or those of the PATHs given.")
@click.option("--json", "as_json", is_flag=True, help="With --failed or --status: print JSON.")
@click.option("--non-interactive", is_flag=True,
              help="With --config: ask nothing; take answers from --set, the existing file and the defaults.")
@click.option("--set", "presets", multiple=True, metavar="KEY=VALUE",
              help="With --config: an answer, e.g. s3.bucket=photos, mapping.main.source=/data, skynet.workers=16.")
@click.option("--allow-mass-delete", is_flag=True, envvar="SKYNET_ALLOW_MASS_DELETE", show_envvar=True,
              help="With --run-with: let the start-up scan delete more than max_delete remote files, or all of "
                   "them when the source folder is empty (off by default: an unmounted disk must not wipe the remote).")
@click.option("--dashboard", is_flag=True,
              help="Serve the read-only web dashboard: every daemon reporting to notify_dsn, or without it this "
                   "machine's state (login: dashboard_password_hash).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True, help="With --dashboard: address to listen on.")
@click.option("--dashboard-port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="With --dashboard: port to listen on.")
@click.option("--secure-cookies", is_flag=True,
              help="With --dashboard: mark its cookies Secure (it is served over HTTPS by a TLS reverse proxy).")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS",
              help="With --dashboard: a reverse proxy's address or network (repeatable); X-Forwarded-For/-Proto "
                   "are believed from it only (the client it names is the one logged and throttled).")
@click.version_option(__version__, "--version", prog_name="skynet", message="%(prog)s %(version)s",
                      help="Print the version and exit.")
@click.argument("paths", nargs=-1)
def main(setup_service: str | None, run_service: str | None, config_file: str | None, service: str | None,
         show_status: bool, show_failed: bool, retry_failed: bool, as_json: bool, non_interactive: bool,
         presets: tuple[str, ...], allow_mass_delete: bool, dashboard: bool, dashboard_host: str,
         dashboard_port: int, secure_cookies: bool, trusted_proxies: tuple[str, ...], paths: tuple[str, ...]) -> None:
    """skynet keeps local folders mirrored to S3, SFTP or another folder, in real time,
    and never loses a change through crashes, reboots or outages.

    PATHS (with --retry-failed) are paths relative to a mapping's source folder."""
    if sum(map(bool, (setup_service, run_service, show_status, show_failed, retry_failed, dashboard))) > 1:
        fail("choose one of --config, --run-with, --status, --failed, --retry-failed and --dashboard")
    if dashboard:
        from skynet import dashboard as dash
        from skynet.reporting import logs
        cfg = load_for_inspection(config_file, service)
        logs.setup(cfg.log_level, cfg.log_file, cfg.log_format)
        try:
            dash.serve(dash.config_from_daemon(cfg, dashboard_host, dashboard_port, secure_cookies,
                                               list(trusted_proxies)))
        except ValueError as exc:
            fail(f"{cfg.path}: {exc}")
        return
    if show_status:
        from skynet.reporting import status
        sys.exit(status.print_status(load_for_inspection(config_file, service), as_json))
    if paths and not retry_failed:
        fail(f"unexpected argument {paths[0]!r} (paths go with --retry-failed)")
    if show_failed or retry_failed:
        from skynet.cli import failed as failed_cli
        cfg = load_for_inspection(config_file, service)
        sys.exit(failed_cli.list_failed(cfg, as_json) if show_failed else failed_cli.retry_failed(cfg, paths))
    if setup_service:
        from skynet.cli.wizard import run_wizard

        service_module(setup_service)  # a missing extra (s3, sftp) is said before the first question
        path = resolve_config_path(config_file, setup_service)
        answers: dict[str, str] = {}
        for item in presets:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                fail(f"--set {item!r}: expected KEY=VALUE")
            answers[key.strip()] = value
        try:
            run_wizard(setup_service, path, answers, interactive=not non_interactive)
        except ConfigError as exc:
            fail(str(exc))
        except click.Abort:
            click.echo("\naborted; nothing written", err=True)
            sys.exit(1)
        return
    if run_service:
        sys.exit(run_daemon(run_service, resolve_config_path(config_file, run_service), allow_mass_delete))
    click.echo(click.get_current_context().get_help())


def load_for_inspection(config_file: str | None, service: str | None) -> "configmod.Config":
    """The config that --failed/--retry-failed/--status look at."""
    if config_file is None:
        candidates = [service] if service else [s for s in SERVICES if os.path.exists(configmod.default_config_path(s))]
        if len(candidates) != 1:
            fail("say which config: --config-file PATH or --service SERVICE"
                 + ("" if candidates else " (no config found; create one with --config SERVICE)"))
        service = candidates[0]
    try:
        cfg = configmod.load(resolve_config_path(config_file, service or ""), service)
    except ConfigError as exc:
        fail(str(exc))
        raise  # not reached
    warn_exposed_secrets(cfg)
    return cfg


def warn_exposed_secrets(cfg: "configmod.Config") -> None:
    """One warning line on stderr (the journal under systemd) when the config
    holds secrets that other users may read."""
    message = configmod.exposed_secrets_warning(cfg)
    if message:
        click.echo(f"skynet: warning: {message}", err=True)


def check_state_dir(cfg: "configmod.Config") -> None:
    """The state folder can be made and written, or a ConfigError that says what to do.

    Under systemd a state_dir outside StateDirectory= is read-only
    (ProtectSystem=strict) or unreachable (ProtectHome=): without this check
    the daemon died with "Read-only file system" and systemd restarted it
    every few seconds.
    """
    try:
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        if os.access(cfg.state_dir, os.W_OK | os.X_OK):
            return
        reason = "not writable"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    problem = f"{cfg.state_dir!r} cannot be used ({reason}) by user {configmod.user_name()}"
    unit_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if unit_dir and os.path.abspath(cfg.state_dir) != os.path.abspath(unit_dir):
        problem += (f"; under systemd use the unit's StateDirectory= (set state_dir = {unit_dir}, or remove "
                    f"state_dir), or allow the folder with ReadWritePaths= (systemctl edit)")
    raise ConfigError(cfg.path, "skynet", "state_dir", problem)


def run_daemon(service: str, path: str, allow_mass_delete: bool = False) -> int:
    from skynet.reporting import logs
    from skynet.engine.daemon import Daemon

    try:
        cfg = configmod.load(path, service)
        configmod.check_folders(cfg)
        check_state_dir(cfg)
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_USAGE  # not reached
    warn_exposed_secrets(cfg)
    cfg.allow_mass_delete = allow_mass_delete
    logs.setup(cfg.log_level, cfg.log_file, cfg.log_format)
    from skynet.engine import priority
    priority.lower(cfg.nice, cfg.io_class)  # before any thread starts: threads inherit it
    logging.getLogger("skynet").info("skynet starting: %s, %d mapping(s), state in %s", path, len(cfg.mappings),
                                     cfg.state_dir)
    def reload() -> configmod.Config:
        new = configmod.load(path, service)
        configmod.check_folders(new)
        new.allow_mass_delete = allow_mass_delete
        return new

    return Daemon(cfg, reload=reload).run()
