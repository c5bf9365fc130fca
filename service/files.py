"""Small file-system helpers shared by everything that writes files atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask).

    ``tempfile.mkstemp`` creates its file 0o600, so a file written to a temporary name and
    renamed into place would otherwise be unreadable to everyone else: a model store
    imported by one user and served by another, or a decoded PNG. The umask is read from
    /proc where it can be (``os.umask`` can only be read by setting it, which is
    process-global and races with other threads creating files); 0o022 is assumed elsewhere.
    """
    umask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return 0o666 & ~umask


def temp_beside(path: Path) -> tuple[int, str]:
    """``(fd, name)`` of a new hidden temporary file in ``path``'s directory, to be renamed
    over ``path`` once complete, with the mode a plain ``open()`` would have given it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, new_file_mode())
    return fd, tmp
