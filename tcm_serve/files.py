"""Small file-system helpers shared by everything that writes files atomically."""
from __future__ import annotations

import contextlib
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


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the complete new one.

    A new temporary file beside the target (created exclusively, so a planted symlink is
    never followed), fsync, rename over the target, fsync the directory (best effort). An
    existing file keeps its permission bits; a new one gets 0o666 minus the umask; a symlink
    at ``path`` is replaced, not written through. The temporary file is removed on any
    failure, and the OSError propagates with ``filename`` set to ``path``.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(os.fsdecode(target)) or "file"
    try:
        existing_mode = os.stat(target).st_mode & 0o7777
    except OSError:
        existing_mode = None
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), existing_mode if existing_mode is not None else new_file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        if exc.filename is None or exc.filename == tmp:
            exc.filename = target
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    if hasattr(os, "O_DIRECTORY"):  # make the rename durable
        with contextlib.suppress(OSError):
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
