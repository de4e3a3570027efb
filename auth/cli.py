"""``stateroom auth``: run the login service alone on uvicorn (uvloop where available)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from auth.settings import add_arguments as add_settings

    add_settings(parser)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    import uvicorn

    from auth.app import create_app
    from auth.errors import ConfigError
    from auth.settings import from_sources
    from infra.errors import RedisUrlError
    from infra.logs import configure_logging

    # One formatter for our lines and uvicorn's (its log_config is the same dictConfig).
    log_config = configure_logging("auth")
    try:
        settings = from_sources(args)
        app = create_app(settings)
    except (ConfigError, RedisUrlError) as exc:
        print(f"stateroom auth: {exc}", file=sys.stderr)
        return 2
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http="h11" if importlib.util.find_spec("httptools") is None else "httptools",
        access_log=settings.access_log,
        log_config=log_config,
        log_level=str(log_config["root"]["level"]).lower(),  # STATEROOM_LOG_LEVEL
        server_header=False,
        lifespan="on",
        # X-Forwarded-For is read by the app itself, from trusted_proxies only
        # (auth.clientaddr); uvicorn's rewriting would trust any loopback peer.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # the lifespan refused to start (logged), or the port is taken
        print("stateroom auth: did not start; see the log above", file=sys.stderr)
        return 3
    return 0
