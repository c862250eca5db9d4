"""The checkpoint file: a torch payload behind a header that carries its SHA-256.

Layout (format 2)::

    b"circuitsim-checkpoint 2 sha256:" + 64 hex digits + b"\\n"
    torch.save payload (a zip archive)

The digest covers every byte of the payload. It is computed while the payload is written
(no second pass, no copy in memory) and the file is written atomically
(``calibration.store.atomic_write``): a checkpoint on disk is either the previous one or the
new one, complete. :func:`read_checkpoint` hashes the payload in 1 MiB chunks and checks the
digest before anything is unpickled, so a flipped byte or a cut file is a
:class:`~training.errors.TrainingError` naming the file, never a model that loads with other
weights. Files of format 1 (a bare torch archive, no digest) are refused: there is no way to
tell whether they are intact.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO

import torch

from calibration.store import atomic_write
from training.errors import TrainingError

__all__ = ["CHECKPOINT_FORMAT", "write_checkpoint", "read_checkpoint"]

CHECKPOINT_FORMAT = 3
_PREFIX = f"circuitsim-checkpoint {CHECKPOINT_FORMAT} sha256:".encode("ascii")
_MAGIC = b"circuitsim-checkpoint "
_DIGITS = 64
_HEADER = len(_PREFIX) + _DIGITS + 1
_ZIP = b"PK\x03\x04"                      # how a bare torch archive (format 1) begins
_CHUNK = 1 << 20


class _HashingWriter:
    """A write-only file that hashes what passes through it (what ``torch.save`` needs).
    It keeps the first OSError of a write (torch reports it as a RuntimeError of its own)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        self.digest.update(data)
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()


def _write(obj: Any, tmp: Path) -> None:
    with tmp.open("wb") as f:
        f.write(_PREFIX + b"0" * _DIGITS + b"\n")
        writer = _HashingWriter(f)
        try:
            torch.save(obj, writer)
        except Exception:
            if writer.error is not None:        # the file system's reason, not torch's echo
                raise writer.error from None
            raise
        f.seek(len(_PREFIX))
        f.write(writer.digest.hexdigest().encode("ascii"))


def write_checkpoint(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` in the format above, atomically (OSError on failure, with
    ``path`` as it was and no temporary file left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: _write(obj, tmp))


def _corrupt(path: Path, problem: str) -> TrainingError:
    return TrainingError(f"{path} is damaged ({problem}); restore it from a copy, or train "
                         "again (start afresh, or rerun from an earlier copy with --resume)")


def read_checkpoint(path: Path) -> Any:
    """What :func:`write_checkpoint` wrote to ``path``, after checking its digest;
    TrainingError if the file is damaged, of an older format or not a checkpoint."""
    try:
        with path.open("rb") as f:
            header = f.read(_HEADER)
            if not header.startswith(_MAGIC):
                if header.startswith(_ZIP):
                    raise TrainingError(
                        f"{path} is a checkpoint of format 1, which carries no checksum and "
                        f"cannot be checked; this version reads format {CHECKPOINT_FORMAT}: "
                        "train again (the same options reproduce the run)")
                raise TrainingError(f"{path} is not a readable checkpoint (it does not begin "
                                    "with the circuitsim checkpoint header); train again or "
                                    "restore it")
            version = header[len(_MAGIC):].split(b" ", 1)[0]
            if version.isdigit() and int(version) != CHECKPOINT_FORMAT:
                raise TrainingError(f"{path} is a checkpoint of format {int(version)}; this "
                                    f"version reads format {CHECKPOINT_FORMAT}")
            if len(header) < _HEADER or not header.startswith(_PREFIX) \
                    or header[-1:] != b"\n":
                raise _corrupt(path, "its header is cut short or damaged")
            want = header[len(_PREFIX):-1]
            digest = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
            if digest.hexdigest().encode("ascii") != want:
                raise _corrupt(path, "its SHA-256 does not match the one written with it: "
                                     "bytes were changed or the file was cut")
            f.seek(_HEADER)
            return torch.load(f, map_location="cpu", weights_only=False)
    except TrainingError:
        raise
    except Exception as err:  # noqa: BLE001 - any reading or unpickling failure: unusable
        raise TrainingError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                            f"{err}); train again or restore it") from err
