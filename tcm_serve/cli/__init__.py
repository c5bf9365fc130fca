"""The ``tcm`` command (:mod:`tcm_serve.cli.main`).

:func:`run` is the console-script entry point. It exists so that an install without the
``server`` extra (a bare ``pip install tcm-serve`` is only the Python client) answers
``tcm`` with one line saying what to install, not an import traceback.
"""

from __future__ import annotations

import sys


def run() -> int:
    """Run ``tcm`` with the process's arguments; exit status as :func:`~tcm_serve.cli.main.main`."""
    try:
        from .main import main
    except ModuleNotFoundError as exc:
        print(
            f"tcm: error: {exc.name or 'a dependency'} is not installed: the tcm command needs tcm-serve's "
            "server dependencies (pip install 'tcm-serve[server]'); a bare install is only the Python client",
            file=sys.stderr,
        )
        return 1
    return main()
