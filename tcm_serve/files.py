"""Writing files: the one home of the atomic-replace rule (:func:`atomic_writer`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


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


def _existing_mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system can)."""
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an error, so that a
    reader (or a crash) sees the old file or the complete new one, never half of one.

    The one way this project writes files (blobs, PNGs, weights, manifests, ONNX graphs,
    reports, plots). A new temporary file beside the target (created exclusively, so a
    planted symlink is never followed), fsync, rename over the target, fsync the directory.
    An existing file keeps its permission bits; a new one gets 0o666 minus the umask; a
    symlink at ``path`` is replaced, not written through. On any failure the temporary
    file is removed and the target left as it was; an OSError names ``path``.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target) or "file"
    mode = _existing_mode(target)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode if mode is not None else new_file_mode())
            yield f
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
    _fsync_directory(directory)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through :func:`atomic_writer`."""
    atomic_write(path, text.encode("utf-8"))
