"""Where results go: checks made before the work that produces them, and atomic writes.

A command that solves tiles in ngspice for minutes, or trains for an epoch, must not find
out only at the end that its output folder is read-only, full, or a file. Every layer that
writes results asks :func:`check_writable_folder` first, and writes through
:func:`atomic_write` (a file is whole or as it was); they live in the lowest layer so that
all of them can.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from netlists.errors import OutputError

__all__ = ["check_writable_folder", "atomic_write", "save_png"]


def check_writable_folder(folder: str | os.PathLike[str], *, what: str) -> Path:
    """Prove that files can be written in ``folder``, and leave the file system as it was.

    The folders missing on the way are created, a small probe file is written, synced and
    removed, and the folders this call created are removed again (the writer makes them
    when it writes). Raises :class:`OutputError` naming ``what`` (e.g. ``"--out"``), the path
    and the reason: read-only file system, no space left, permission denied, a file in the
    way. Works for root too, where permission bits do not stop a write. Returns ``folder``
    as a Path.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {str(folder)!r} is a file, not a folder: choose another "
                          "path or move the file away", field=what)
    created: list[Path] = []
    probe: str | None = None
    try:
        for parent in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
            if parent.parent.exists() and not parent.parent.is_dir():
                raise OutputError(f"{what} {str(folder)!r} cannot be created: "
                                  f"{str(parent.parent)!r} is a file, not a folder",
                                  field=what)
            parent.mkdir()
            created.append(parent)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".circuitsim-write-check.")
        try:
            os.write(fd, b"circuitsim\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise OutputError(f"{what} {str(folder)!r} cannot be written: "
                          f"{err.strerror or type(err).__name__}; choose a folder on a "
                          "writable file system with free space", field=what) from err
    finally:
        if probe is not None:
            _remove(Path(probe).unlink)
        for path in reversed(created):
            _remove(path.rmdir)
    return folder


def _remove(remove: Callable[[], object]) -> None:
    try:
        remove()
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(target: Path) -> Path:
    """A new, empty temporary file beside ``target`` (same file system, so rename is atomic).

    Named ``.<target name>.<random>.tmp``: hidden, and never matching the target's name.
    """
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file beside ``target``, fsync it, rename it over
    ``target`` and fsync the folder; on any failure the temporary file is removed and
    ``target`` is left as it was."""
    tmp = _temp_path(target)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp.unlink)
        raise
    _fsync_dir(target.parent)



def save_png(fig: Any, path: Path | str, *, dpi: int = 120) -> Path:
    """Write the matplotlib figure ``fig`` to ``path`` as PNG atomically (folders made as
    needed) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return path
