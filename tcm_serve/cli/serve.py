"""``tcm serve`` (run the HTTP service) and ``tcm remote`` (use one), for :mod:`tcm_serve.cli.main`.

``tcm serve`` flags mirror :class:`~tcm_serve.config.Settings` (each also a ``TCM_*``
environment variable; a flag wins). SIGTERM or Ctrl-C: stop accepting connections, let
in-flight requests finish within ``--shutdown-grace-s``, drain the workers, exit 0. If the
worker pool gives up (a model fails to load, or a device's worker keeps dying) the service
shuts down the same way and exits 3, so that any supervisor restarts it.

``tcm remote compress|decompress --url URL IN... [-o OUT] [-q Q]`` mirrors ``tcm compress``
/ ``tcm decompress`` against a running service.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from ..codec.container import BACKEND_KINDS, BITSTREAMS
from ..codec.effort import DEFAULT_MAX_EFFORT
from ..errors import TcmError
from .argtypes import add_store_option, add_tile_option, effort_level, positive_int, quality


def add_parsers(sub) -> None:
    """Add ``serve`` and ``remote`` to the ``tcm`` subcommands."""
    s = sub.add_parser(
        "serve",
        help="run the HTTP compression service",
        description="Run the HTTP service. Every flag can also be set as a TCM_* environment variable "
        "(e.g. TCM_PORT, TCM_QUALITIES=2,3); flags win.",
    )
    s.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 behind a load balancer)")
    s.add_argument("--port", type=int, help="TCP port (default 8000; 0 picks a free one)")
    add_store_option(s)
    s.add_argument("--qualities", help="quality levels to serve, e.g. 2,3 (default: every level in the store)")
    s.add_argument("--default-quality", type=quality, help="quality when a request names none (default: the highest)")
    s.add_argument("--devices", help="auto, cpu, cuda, or a list like cuda:0,cuda:1 (default auto)")
    s.add_argument("--max-batch-size", type=positive_int, help="largest batch (default 1 on CPU, 8 on CUDA)")
    s.add_argument("--max-batch-delay-ms", type=float, help="how long a batch may wait to fill (default 5)")
    s.add_argument("--max-queue", type=positive_int, help="requests waiting for a device before 429 (default 64)")
    s.add_argument("--coder-threads", type=positive_int, help="range-coding threads (default 2)")
    s.add_argument("--max-body-bytes", type=positive_int, help="largest request body (default 50 MiB)")
    s.add_argument("--max-pixels", type=positive_int, help="largest image, width x height (default 40000000)")
    s.add_argument(
        "--max-effort",
        type=effort_level,
        help=f"highest encoder effort /compress accepts, 422 above (default {DEFAULT_MAX_EFFORT})",
    )
    s.add_argument("--compare-max-pixels", type=positive_int, help="largest image for /compare (default 4000000)")
    s.add_argument("--compare-concurrency", type=positive_int, help="comparisons running at once (default 1)")
    s.add_argument("--api-keys-file", help="require API keys: a file of keys, one per line (default: none required)")
    s.add_argument("--open-paths", help="paths that need no key (default /healthz,/readyz,/metrics)")
    s.add_argument("--request-timeout-s", type=float, help="per-request deadline, 504 past it (default 60)")
    s.add_argument("--shutdown-grace-s", type=float, help="time in-flight requests get on SIGTERM (default 30)")
    s.add_argument("--log-level", help="critical, error, warning, info (default) or debug")
    s.add_argument(
        "--backend",
        choices=BACKEND_KINDS,
        help="torch (default, exact arithmetic) or onnx (ONNX Runtime, faster: docs/performance.md)",
    )
    s.add_argument("--onnx-dir", help="where the onnx backend keeps exported graphs (default: the store directory)")
    s.add_argument(
        "--bitstream",
        choices=BITSTREAMS,
        help="what /compress makes by default: portable (decodes anywhere; default) or exact",
    )
    add_tile_option(s, "the transforms")
    s.set_defaults(handler=cmd_serve)

    r = sub.add_parser("remote", help="compress / decompress through a running service")
    rsub = r.add_subparsers(dest="remote_command", required=True, parser_class=type(r))

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            required=True,
            help="service base URL, e.g. http://127.0.0.1:8000 (API key, if it needs one: $TCM_API_KEY)",
        )
        p.add_argument("-o", "--output", help="output file (one input) or directory (default: next to each input)")
        p.add_argument("--force", action="store_true", help="overwrite existing output files")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")

    rc = rsub.add_parser("compress", help="compress images to .tcm files via the service")
    rc.add_argument("inputs", nargs="+", metavar="IN", help="image files or directories of images")
    rc.add_argument("-q", "--quality", type=quality, help="quality level (default: the service's default)")
    rc.add_argument("--drop-alpha", action="store_true", help="discard an alpha channel instead of refusing the image")
    rc.add_argument("--bitstream", choices=BITSTREAMS, help="portable or exact (default: the service's)")
    rc.add_argument(
        "--effort", type=effort_level, default=0, help="encoder effort, up to the service's TCM_MAX_EFFORT (default: 0)"
    )
    common(rc)
    rd = rsub.add_parser("decompress", help="decompress .tcm files to PNG via the service")
    rd.add_argument("inputs", nargs="+", metavar="IN", help=".tcm files or directories of them")
    common(rd)
    r.set_defaults(handler=cmd_remote)


# -- serve ------------------------------------------------------------------------------------
#: Exit status of ``tcm serve`` when the worker pool gave up while serving.
EXIT_UNHEALTHY = 3
SETTINGS_FLAGS = (
    "host",
    "port",
    "qualities",
    "default_quality",
    "devices",
    "max_batch_size",
    "max_batch_delay_ms",
    "max_queue",
    "coder_threads",
    "max_body_bytes",
    "max_pixels",
    "max_effort",
    "request_timeout_s",
    "shutdown_grace_s",
    "log_level",
    "backend",
    "onnx_dir",
    "bitstream",
    "compare_max_pixels",
    "compare_concurrency",
    "api_keys_file",
    "open_paths",
    "tile",
)


def cmd_serve(args) -> int:
    import signal

    import uvicorn

    from ..api import create_app
    from ..api.logs import configure_logging
    from ..config import load_settings

    settings = load_settings(model_store=args.store, **{k: getattr(args, k, None) for k in SETTINGS_FLAGS})
    configure_logging(settings.log_level)
    app = create_app(settings)  # ConfigError (no models, unknown quality/device) -> exit 1 here
    app.state.pool.verify_models()  # a missing/corrupt/mismatched weights file -> exit 1 before listening
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging
        access_log=False,  # one line per request comes from the app (tcm.access)
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]  # seconds, float or int
        lifespan="on",
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, lifespan shutdown) and then
    # re-raises the signal to the handler that was installed before it: make that a no-op
    # so that a graceful shutdown exits 0 instead of dying by the signal.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    gave_up: list[str] = []
    _stop_when_pool_fails(server, app.state.pool, gave_up)
    server.run()
    if not server.started:
        return 1  # could not bind (uvicorn logged why) or the lifespan failed
    return EXIT_UNHEALTHY if gave_up else 0


def _stop_when_pool_fails(server, pool, gave_up: list[str], interval_s: float = 0.5) -> threading.Thread:
    """Shut the server down (gracefully) once the pool has given up.

    /healthz already answers 503 then, which is enough where a liveness probe restarts the
    container (Kubernetes); but docker compose's restart policy and systemd act only on an
    exit, and would leave a process that refuses every request running for ever."""

    def watch() -> None:
        while not server.should_exit:
            reason = pool.failed
            if reason:
                gave_up.append(reason)
                logging.getLogger("tcm.serve").error(f"exiting with status {EXIT_UNHEALTHY}: {reason}")
                server.should_exit = True
                return
            time.sleep(interval_s)

    t = threading.Thread(target=watch, name="tcm-pool-watch", daemon=True)
    t.start()
    return t


# -- remote -----------------------------------------------------------------------------------
def cmd_remote(args) -> int:
    from ..client import TcmClient
    from ..files import atomic_write
    from ..imageio import IMAGE_SUFFIXES
    from .main import _expand, _output_paths, _Progress

    compress = args.remote_command == "compress"
    files = _expand(args.inputs, IMAGE_SUFFIXES if compress else {".tcm"})
    outs = _output_paths(files, args.output, ".tcm" if compress else ".png", args.force)
    progress = _Progress(len(files))
    total_bytes = total_pixels = 0
    t0 = time.perf_counter()
    with TcmClient(args.url, timeout=args.timeout) as client:
        for src, dst in zip(files, outs):
            try:
                data = src.read_bytes()
            except OSError as exc:
                raise TcmError(f"cannot read {src}: {exc.strerror or exc}") from None
            try:
                if compress:
                    res = client.compress_full(
                        data,
                        quality=args.quality,
                        drop_alpha=args.drop_alpha,
                        bitstream=args.bitstream,
                        effort=args.effort,
                    )
                    out = res.blob
                    total_bytes += len(out)
                    total_pixels += res.width * res.height
                    if len(files) == 1:
                        print(
                            f"{src} -> {dst}: {res.width}x{res.height}, q{res.quality}, {len(out)} bytes, {res.bpp:.4f} bpp"
                        )
                else:
                    out = client.decompress(data)
                    if len(files) == 1:
                        print(f"{src} -> {dst}")
            except TcmError as exc:
                raise type(exc)(f"{src}: {exc}") from None
            atomic_write(dst, out)
            progress.step(src.name)
    elapsed = time.perf_counter() - t0
    if compress:
        print(
            f"compressed {len(files)} image(s) via {args.url}: {8 * total_bytes / max(total_pixels, 1):.4f} bpp "
            f"(container included), {elapsed:.2f} s"
        )
    else:
        print(f"decompressed {len(files)} file(s) via {args.url} in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: tcm serve / tcm remote")
