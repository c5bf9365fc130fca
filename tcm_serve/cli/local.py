"""A ``tcm serve`` child process on loopback: the one spelling of its command line, its
environment and its readiness wait, for the tests (tests/servers.py) and the benchmarks
(benchmarks/soak.py, bench_service.py, bench_memory.py) that measure a real server.

The child runs the ``tcm`` entry point of the interpreter that starts it (``python -m
tcm_serve.cli.main``, so a virtualenv without its scripts on PATH works) and inherits no
``TCM_*`` variable: the options given are all that configure it, whatever the caller's shell
exports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """The server exited, or was not ready in time."""


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def serve_command(store: Path | str, port: int, *options: str) -> list[str]:
    """``tcm serve`` on ``LOOPBACK:port`` with ``store``, on the CPU, plus ``options``."""
    return [
        sys.executable,
        "-m",
        "tcm_serve.cli.main",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--store",
        str(store),
        "--devices",
        "cpu",
        *options,
    ]


def environment_without_settings() -> dict[str, str]:
    """This process's environment less every ``TCM_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TCM_")}


def wait_ready(
    url: str, proc: subprocess.Popen, timeout: float, on_status: Callable[[httpx.Response], None] | None = None
) -> float:
    """Seconds until ``url``'s ``/readyz`` answers 200; ``on_status`` sees every answer before
    it. Raises :class:`ServerStartError` when the process exits or ``timeout`` passes."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise ServerStartError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(url + "/readyz", timeout=5)
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        if on_status is not None:
            on_status(r)
        if r.status_code == 200:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise ServerStartError(f"server not ready after {timeout:g} s")
