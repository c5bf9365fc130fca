"""tcm-serve: learned image compression (TCM, CVPR 2023) as a codec, a CLI and a service.

The version lives in ``pyproject.toml`` only; this reads it from the installed metadata.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tcm-serve")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
