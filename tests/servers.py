"""A real ``tcm serve`` process on 127.0.0.1 for the tests that need one (test_server.py,
test_web.py): started in a subprocess, its log in a file, stopped with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tcm_serve.cli.local import (
    LOOPBACK,
    ServerStartError,
    environment_without_settings,
    free_port,
    serve_command,
    wait_ready,
)

START_TIMEOUT_S = 120


class Server:
    """``python -m tcm_serve.cli.main serve`` in a subprocess, its log in a file."""

    def __init__(self, store: Path, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            serve_command(store, self.port, "--request-timeout-s", "600", *extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment_without_settings(),
            cwd=Path(__file__).resolve().parents[1],
        )
        self.readyz: list[int] = []  # every /readyz status seen while waiting

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        try:
            wait_ready(self.url, self.proc, START_TIMEOUT_S, self._saw_readyz)
        except ServerStartError as exc:
            pytest.fail(f"{exc}:\n{self.log()}")

    def _saw_readyz(self, r: httpx.Response) -> None:
        self.readyz.append(r.status_code)
        if r.status_code != 200:
            body = r.json()
            assert r.status_code == 503 and body["error"] == "not_ready" and body["detail"], body

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
