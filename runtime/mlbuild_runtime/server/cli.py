"""``python -m mlbuild_runtime``: read settings, set up logging, serve with uvicorn.

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 2 for a bad setting (one line naming the
flag or environment variable), 1 if the server could not start (port taken, ...).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

from ._logging import configure_logging
from ._settings import Settings, SettingsError

__all__ = ["main"]

log = logging.getLogger("mlbuild.runtime")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = Settings.from_sources(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.resolved_log_format(), settings.log_level)

    import uvicorn  # after settings: `--help` and bad flags stay fast

    from ._app import create_app
    from ._http_limits import LIMIT_NAMES, HttpLimits, HttpLimitsUnavailable, limited_protocol

    app = create_app(settings)
    metrics = app.state.metrics
    for name in LIMIT_NAMES:  # every limit shows in /metrics from the start, at 0
        metrics.http_limit_rejections.labels(name)
    try:
        # Header size/count, header/body/idle/send timeouts and the connection cap live in the
        # protocol (uvicorn has none of them). It needs httptools: uvicorn's h11 fallback would
        # serve without the limits, so a missing httptools is a start-up error, not a fallback.
        protocol = limited_protocol(HttpLimits.from_settings(settings), metrics.http_limit_hit)
    except HttpLimitsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",  # uvloop when installed
        http=protocol,
        lifespan="on",
        log_config=None,  # our handler (configure_logging) formats uvicorn's records too
        access_log=False,  # the middleware writes one access line per request
        timeout_graceful_shutdown=settings.grace_period,
        timeout_keep_alive=settings.keepalive_timeout,  # uvicorn's idle timer; the protocol arms it on connect too
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal after its graceful shutdown so the previous handler
    # runs; with the default handlers that would end the process as "killed by SIGTERM"
    # (exit 143) instead of 0. These no-op handlers make a graceful stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 on bind errors, 3 on lifespan failure
        return exc.code if isinstance(exc.code, int) else 1
    if not server.started:
        return 1
    log.info("stopped")
    return 0
