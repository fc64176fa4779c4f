"""`skynet serve`: the upload gateway (tus 1.0) into the [gateway] targets of a config."""
from __future__ import annotations

import click

from skynet.cli.common import ExtraAware, config_options, fail


@click.command(cls=ExtraAware, context_settings={"help_option_names": ["-h", "--help"]})
@config_options
@click.option("--host", help="Address to listen on (default: [gateway] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default: [gateway] port; 0: any free one).")
def serve(config_file: str | None, service: str | None, host: str | None, port: int | None) -> None:
    """Serve resumable uploads (tus 1.0) that land in every destination of [gateway] targets,
    with versions, ranged downloads and a versions listing (README, "The upload gateway")."""
    from skynet.cli.main import check_state_dir, load_for_inspection
    from skynet.config.settings import ConfigError
    from skynet.reporting import logs

    cfg = load_for_inspection(config_file, service)
    if cfg.gateway is None:
        fail(f"{cfg.path}: no [gateway] section: nothing to serve (config/README.md, [gateway])")
    try:
        check_state_dir(cfg)
    except ConfigError as exc:
        fail(str(exc))
    logs.setup(cfg.log_level, cfg.log_file, cfg.log_format)
    from skynet.gateway.server import GatewayServer

    try:
        server = GatewayServer(cfg, host, port)
    except OSError as exc:
        fail(f"cannot listen on {host or cfg.gateway.host}:{cfg.gateway.port if port is None else port}: "
             f"{exc.strerror or exc}")
        return
    server.run()
