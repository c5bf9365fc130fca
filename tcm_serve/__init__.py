"""tcm-serve: learned image compression (TCM, CVPR 2023) as a codec, a CLI and a service.

The version lives in ``pyproject.toml`` only; ``tcm_serve.__version__`` reads it from the
installed metadata on first use (importlib.metadata costs ~70 ms, which every ``tcm``
command would otherwise pay at start-up).
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("tcm-serve")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
