"""``signing-key-operator serve``: run the JWKS sidecar.

The main CLI calls :func:`add_arguments` on its ``serve`` sub-parser and :func:`run` with the
parsed arguments. Exactly one JWKS source: ``--jwks-file`` (the mounted ConfigMap volume, or
the ``jwks.json`` file in it) or ``--configmap NAMESPACE/NAME`` (watch through the API); and at
most one revocation source, ``--revocations-file`` or ``--revocations-configmap``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from aiohttp import web

from .app import LIFECYCLE, make_app
from .fastpath import FastJwksSite
from .settings import DEFAULT_MAX_AGE, Settings
from .sources import ConfigMapWatchSource, FileSource, Source, load_api_client

REVOCATIONS_KEY = "revocations.json"
"""Data key (and file name in the mounted volume) of the revocation document."""

log = logging.getLogger(__name__)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value}")
    return value


def _configmap_ref(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--jwks-file",
        metavar="PATH",
        help="the mounted ConfigMap volume directory, or the jwks.json file in it (watched for the "
        "kubelet's atomic symlink swap and for plain rewrites)",
    )
    source.add_argument(
        "--configmap",
        metavar="NAMESPACE/NAME",
        type=_configmap_ref,
        help="watch this ConfigMap through the API (needs get/list/watch on it only)",
    )
    revocations = parser.add_mutually_exclusive_group()
    revocations.add_argument(
        "--revocations-configmap",
        metavar="NAMESPACE/NAME",
        type=_configmap_ref,
        help="also serve /revocations.json from this ConfigMap (the policy's <name>-revocations), "
        "watched through the API (needs get/list/watch on it only)",
    )
    revocations.add_argument(
        "--revocations-file",
        metavar="PATH",
        help="also serve /revocations.json from this mounted ConfigMap volume directory (or the "
        "revocations.json file in it)",
    )
    parser.add_argument(
        "--key",
        default=defaults.data_key,
        help="ConfigMap data key / file name of the JWK Set (default: %(default)s)",
    )
    parser.add_argument("--host", default=defaults.host, help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="listen port (default: %(default)s)")
    parser.add_argument(
        "--max-age",
        type=_non_negative_int,
        default=None,
        help="Cache-Control max-age in seconds (default: the policy's value published with the "
        f"ConfigMap, else {DEFAULT_MAX_AGE})",
    )
    parser.add_argument("--issuer", default=None, help="serve /.well-known/openid-configuration for this issuer URL")
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig for --configmap (default: in-cluster config, else the default kubeconfig)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=defaults.poll_interval,
        help="seconds between checks of --jwks-file (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=defaults.shutdown_delay,
        help="seconds to keep serving (while /readyz says 503) after SIGTERM (default: %(default)s)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host,
        port=args.port,
        max_age=args.max_age,
        issuer=args.issuer,
        data_key=args.key,
        poll_interval=args.poll_interval,
        shutdown_delay=args.shutdown_delay,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        log.error("invalid settings: %s", exc)
        return 2
    api_client: Any = None
    source: Source
    revocation_source: Source | None = None
    if args.configmap or args.revocations_configmap:
        try:
            api_client = load_api_client(args.kubeconfig)
        except Exception as exc:  # noqa: BLE001 - any config loading problem is fatal here
            log.error("cannot load Kubernetes client configuration: %s", exc)
            return 2
    if args.configmap:
        source = ConfigMapWatchSource(*args.configmap, api_client, settings)
    else:
        source = FileSource(args.jwks_file, settings)
    if args.revocations_configmap:
        revocation_source = ConfigMapWatchSource(*args.revocations_configmap, api_client, settings, data_key=REVOCATIONS_KEY)
    elif args.revocations_file:
        revocation_source = FileSource(args.revocations_file, settings, data_key=REVOCATIONS_KEY)
    try:
        asyncio.run(serve(source, settings, revocation_source=revocation_source))
    finally:
        if api_client is not None:
            with contextlib.suppress(Exception):
                api_client.close()
    return 0


async def serve(
    source: Source, settings: Settings, *, stop: asyncio.Event | None = None, revocation_source: Source | None = None
) -> None:
    """Run the app until ``stop`` is set or SIGTERM/SIGINT arrives, then shut down gracefully:
    report not ready, keep serving for ``shutdown_delay``, close the listener, let in-flight
    requests finish (``shutdown_timeout``), stop the source."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    app = make_app(source, settings, revocation_source=revocation_source)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        keepalive_timeout=settings.keepalive_timeout,
    )
    await runner.setup()
    try:
        # JWKS GET/HEAD answered by the fast path, everything else by the app (fastpath.py).
        # runner.cleanup() stops the site, which closes the fast-path connections too.
        site = FastJwksSite(runner, settings.host, settings.port, keepalive_timeout=settings.keepalive_timeout)
        await site.start()
        log.info("serving JWKS on http://%s:%d from %s", settings.host, settings.port, source.description)
        await stop.wait()
        log.info("shutting down: not ready, draining for %.1fs", settings.shutdown_delay)
        app[LIFECYCLE].draining = True
        await asyncio.sleep(settings.shutdown_delay)
    finally:
        await runner.cleanup()
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("stopped")
