"""Stand-alone entry points (until `main.py --dashboard` is wired):

    python -m skynet.dashboard hash-secret            # prompts, prints scrypt$... for the config
    python -m skynet.dashboard new-token              # prints a random Bearer token and its sha256$ hash
    python -m skynet.dashboard serve --dsn URL --port 8765
    python -m skynet.dashboard serve --state-dir ~/.local/state/skynet/local    # no database

The password hash is read from $SKYNET_DASHBOARD_PASSWORD_HASH (or
--password-hash-file), never from the command line of a running process list;
a DSN with a password is better given through libpq's environment (--dsn "").
"""
from __future__ import annotations

import logging
import os
import sys

import click

from skynet.dashboard import DashboardConfig, hash_secret, new_token, serve
from skynet.extras import MissingExtra


@click.group()
def cli() -> None:
    """The skynet dashboard."""


@cli.command("hash-secret")
def hash_secret_cmd() -> None:
    """Prompt for a password or token and print its hash for the config."""
    plain = click.prompt("secret", hide_input=True, confirmation_prompt=True)
    click.echo(hash_secret(plain))


@cli.command("new-token")
def new_token_cmd() -> None:
    """Print a random token for scripts (Authorization: Bearer) and the hash the config stores."""
    token, digest = new_token()
    click.echo(f"token (give it to the scripts; it is shown only now): {token}")
    click.echo(f"dashboard_token_hash = {digest}")


@cli.command("serve")
@click.option("--dsn", default=None, help='PostgreSQL URL; "" for libpq environment variables; omit for local mode.')
@click.option("--sslmode", default=None)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--state-dir", "state_dirs", multiple=True, help="Local mode: a daemon's state folder (repeatable).")
@click.option("--password-hash-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--secure-cookie", "--secure-cookies", is_flag=True, help="Mark cookies Secure (when served over HTTPS).")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="A Host name to answer to (repeatable; default: --host and localhost).")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True,
              help="Address or network of a reverse proxy whose X-Forwarded-For/-Proto are believed (repeatable).")
@click.option("--metrics-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Serve the fleet's figures for Prometheus at /metrics on this port, without login (0: off).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics port listens on.")
def serve_cmd(dsn: str | None, sslmode: str | None, host: str, port: int, state_dirs: tuple[str, ...],
              password_hash_file: str | None, secure_cookie: bool, allowed_hosts: tuple[str, ...],
              trusted_proxies: tuple[str, ...], metrics_port: int, metrics_host: str) -> None:
    """Serve the dashboard until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    pw = os.environ.get("SKYNET_DASHBOARD_PASSWORD_HASH")
    if password_hash_file:
        with open(password_hash_file) as f:
            pw = f.read().strip()
    token = os.environ.get("SKYNET_DASHBOARD_TOKEN_HASH")
    cfg = DashboardConfig(dsn=dsn, sslmode=sslmode, host=host, port=port, password_hash=pw, token_hash=token,
                          state_dirs=list(state_dirs), secure_cookie=secure_cookie,
                          allowed_hosts=list(allowed_hosts), trusted_proxies=list(trusted_proxies),
                          metrics_port=metrics_port, metrics_host=metrics_host)
    try:
        serve(cfg)
    except (ValueError, MissingExtra) as exc:  # a bad setting, or Flask/waitress not installed: one line
        click.echo(f"skynet dashboard: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    cli()
