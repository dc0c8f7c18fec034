"""Writing files safely: atomically, and with the permissions the user's umask asks for.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask; a file renamed into
place from there would stay private to its owner, so a cache shared by a group, or an executed
notebook served by a web server, could not be read. :func:`atomic_write` and
:func:`apply_umask` give such files the mode an ordinary ``open(path, "w")`` would.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "apply_umask", "default_file_mode"]


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process' umask."""
    try:  # Linux shows the umask without changing it (no window where another thread sees 0)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def apply_umask(path) -> None:
    """Give ``path`` (a file made by ``mkstemp``, mode 0600) the mode of an ordinary new file."""
    os.chmod(path, default_file_mode())


def atomic_write(path: Path, write: Callable[[object], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    ``write(f)`` fills the open temporary file. If it raises, the temporary file is removed
    and ``path`` is left as it was (absent or the previous complete version). The file gets
    the mode of an ordinary new file (the user's umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), default_file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
