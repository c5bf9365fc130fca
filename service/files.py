"""Small file-system helpers shared by everything that writes files atomically."""
from __future__ import annotations

import os


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask).

    ``tempfile.mkstemp`` creates its file 0o600, so a file written to a temporary name and
    renamed into place would otherwise be unreadable to everyone else: a model store
    imported by one user and served by another, or a ``tcm compress`` output. The umask is
    read from /proc where it can be (``os.umask`` can only be read by setting it, which
    races with other threads creating files); 0o022 is assumed elsewhere.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644
