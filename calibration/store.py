"""Where calibrations live on disk: content hashes, HDF5 tables, partial results and locks.

A calibration is one HDF5 file, named by the content hash of everything that determines its
result (:func:`content_hash`), in a user cache directory (:func:`default_cache_dir`). This
module owns the bytes on disk; what the surfaces mean is :mod:`calibration.base`'s business.

File layout (``SCHEMA_VERSION`` 1)
----------------------------------
::

    /                       attrs: the caller's attrs (provenance: content_hash, creation
                            time, wall time, SPICE runs, ...), schema_version, data_sha256,
                            complete=True (written last)
    /<surface>/             attrs: SurfaceData.attrs
    /<surface>/axes/<axis>  1-D dataset; attrs unit, description
    /<surface>/<dataset>    dataset; attrs unit, description, dims (axis names, in order)

Attribute values that are not a str, int, float or bool (lists, dicts, None) are stored as
canonical JSON text and their names listed in the ``__json__`` attribute of the same object,
so that :func:`open_table` gives back what was written.

``data_sha256`` is a SHA-256 over every axis and dataset (names, units, descriptions, dims,
dtype, shape and bytes) and every attribute except itself and ``complete``: a flipped bit
anywhere in the stored values is detected on open, even where HDF5 itself reads it without
complaint.

Why a killed calibration never looks complete
---------------------------------------------
:func:`write_table` writes a temporary file in the target's directory, fsyncs it and renames
it over the target (``os.replace`` is atomic on POSIX), so ``path`` holds either nothing, the
old file or the whole new one. ``complete`` is set last inside the file, so a temporary file
copied by hand is rejected too. Finished jobs are kept meanwhile by :class:`PartialResults`
(one file per job, each written the same way), and :class:`FileLock` keeps two processes
from computing the same calibration at once.

``import calibration.store`` needs only numpy and h5py (never torch nor distributed).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable, Mapping

import h5py
import numpy as np

from calibration.base import Array, SurfaceData
from netlists.config import HardwareConfig
from netlists.errors import TableError
from netlists.files import atomic_write

__all__ = [
    "SCHEMA_VERSION",
    "FileLock",
    "PartialResults",
    "Table",
    "atomic_write",
    "content_hash",
    "default_cache_dir",
    "open_table",
    "write_table",
]

SCHEMA_VERSION: int = 1
"""Version of the HDF5 layout described in the module docstring; bump on any change."""

# Root attributes that write_table sets itself; a caller may not pass them.
_SCHEMA_ATTR = "schema_version"
_COMPLETE_ATTR = "complete"
_CHECKSUM_ATTR = "data_sha256"
_JSON_ATTR = "__json__"
_RESERVED_ROOT = frozenset({_SCHEMA_ATTR, _COMPLETE_ATTR, _CHECKSUM_ATTR, _JSON_ATTR})
_AXES_GROUP = "axes"

_RECALIBRATE = ("delete it and run `circuitsim calibrate ... --force` (with the same options) "
                "to recalibrate")


# --------------------------------------------------------------------------------------
# Cache directory and content hash
# --------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """The directory calibrations are cached in when no ``--out`` is given.

    ``$CIRCUITSIM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/circuitsim``, else
    ``~/.cache/circuitsim`` (the XDG base-directory default). Not created here.
    """
    explicit = os.environ.get("CIRCUITSIM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "circuitsim"
    return Path.home() / ".cache" / "circuitsim"


def _canonical(obj: Any) -> Any:
    """``obj`` as plain JSON data with a single spelling for equal content.

    Mappings keep string keys (sorted when dumped); tuples, lists become lists; sets are
    sorted by their canonical text; dataclasses become their ``asdict``; paths their POSIX
    string; numpy scalars the matching Python scalar; numpy arrays a tagged record of
    dtype, shape and the SHA-256 of their C-ordered bytes (object arrays: their nested
    lists). Floats are written by ``json`` with ``repr`` (shortest round trip), so 0.1 and
    0.1000000000000001 differ, 1 and 1.0 differ, and the text is the same in every process.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, np.generic):
        return _canonical(obj.item())
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            return {"__ndarray__": "object", "shape": list(obj.shape),
                    "data": _canonical(obj.tolist())}
        data = np.asarray(obj, order="C")
        return {"__ndarray__": data.dtype.str, "shape": list(data.shape),
                "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(dataclasses.asdict(obj))
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, bytes):
        return {"__bytes__": obj.hex()}
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
                raise TypeError(f"content_hash: mapping keys must be str or int, got "
                                f"{type(key).__name__} {key!r}")
            name = str(key)
            if name in out:
                raise TypeError(f"content_hash: keys {key!r} and {name!r} collide")
            out[name] = _canonical(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_canonical(item) for item in obj]
    if isinstance(obj, (set, frozenset)):
        items = [_canonical(item) for item in obj]
        return sorted(items, key=_dumps)
    raise TypeError(f"content_hash cannot encode a {type(obj).__name__}: {obj!r}")


def _dumps(canonical: Any) -> str:
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True)


def content_hash(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON encoding of ``obj`` (see :func:`_canonical`).

    Equal content gives the same hash in any process and any run (no ``hash()``
    randomization, no dict-order dependence); any changed value, key or type of number
    gives a different one. Raises TypeError for values it cannot encode, rather than
    hashing their ``repr`` (which may hold a memory address).
    """
    return hashlib.sha256(_dumps(_canonical(obj)).encode("ascii")).hexdigest()


# --------------------------------------------------------------------------------------
# Lock
# --------------------------------------------------------------------------------------

class FileLock:
    """An exclusive ``flock`` on ``path`` (created with its directory if needed).

    Used as ``with FileLock(path): ...`` around computing and writing one calibration, so
    that a second process asking for the same calibration waits and then finds it in the
    cache instead of computing it again or writing the same file concurrently. The lock is
    released when the block ends or when the holding process dies (the kernel drops it),
    so a killed calibration never leaves a stale lock. The lock file itself is left in
    place (deleting it would let two processes lock two different files); it holds the
    holder's PID, for the error message.

    ``timeout_s=None`` waits as long as it takes; otherwise a :class:`TableError` after
    ``timeout_s`` seconds, polling every ``poll_s``. While it waits, ``on_wait(holder,
    waited_s)`` (if given) is called: once as soon as the lock turns out to be taken
    (``waited_s`` about 0), then every ``report_every_s`` seconds; ``holder`` is the PID in
    the lock file, or None when it names none. That is how a process that would otherwise
    sit silent says what it waits for. Not re-entrant; each instance is used once at a
    time. POSIX only (``fcntl``); on NFS, ``flock`` is only as good as the server's lock
    support.
    """

    def __init__(self, path: Path | str, *, timeout_s: float | None = None,
                 poll_s: float = 0.1,
                 on_wait: Callable[[int | None, float], None] | None = None,
                 report_every_s: float = 60.0) -> None:
        if timeout_s is not None and (isinstance(timeout_s, bool)
                                      or not isinstance(timeout_s, (int, float))
                                      or math.isnan(timeout_s) or timeout_s < 0):
            raise ValueError(f"timeout_s = {timeout_s!r} must be None or a number >= 0")
        for name, value in (("poll_s", poll_s), ("report_every_s", report_every_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} = {value!r} must be a positive number of seconds")
        if on_wait is not None and not callable(on_wait):
            raise TypeError(f"on_wait = {on_wait!r} must be None or a callable "
                            f"on_wait(holder_pid, waited_s)")
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.poll_s = float(poll_s)
        self.on_wait = on_wait
        self.report_every_s = float(report_every_s)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (see the class docstring for waiting and timeouts)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this FileLock is already held (not re-entrant)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_flock(fd):
                self._wait(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _wait(self, fd: int) -> None:
        """Wait until the lock that another process holds on ``fd``'s file is ours."""
        start = time.monotonic()
        deadline = None if self.timeout_s is None else start + self.timeout_s
        next_report = start
        while True:
            now = time.monotonic()
            if self.on_wait is not None and now >= next_report:
                self.on_wait(_holder_pid(fd), now - start)
                next_report = now + self.report_every_s
            if deadline is None and self.on_wait is None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # nothing to report: let the kernel wait
                return
            if deadline is not None and now >= deadline:
                holder = _holder_pid(fd)
                by = f" (by process {holder})" if holder is not None else ""
                raise TableError(
                    f"{self.path}: lock still held after {self.timeout_s:g} s{by}: another "
                    f"process is writing this calibration. Wait for it to finish (the "
                    f"result will then be in the cache), or stop that process.")
            pause = self.poll_s if deadline is None else min(self.poll_s, deadline - now)
            time.sleep(pause)
            if _try_flock(fd):
                return

    def release(self) -> None:
        """Drop the lock; harmless if not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_flock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if it is free now; whether it was."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        return False
    return True


def _holder_pid(fd: int) -> int | None:
    """The PID the lock's holder wrote into the lock file, or None."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# --------------------------------------------------------------------------------------
# Partial results
# --------------------------------------------------------------------------------------

_PART_RE = re.compile(r"^(\d+)\.npz$")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_KEY_FILE = "KEY"
_PARTS_FORMAT = 1
_POINT_ENTRY = "__partial_results_point__"


class PartialResults:
    """Finished job results of one calibration, persisted as they complete, for resume.

    ``directory`` holds a ``KEY`` file (the calibration's content hash) and one
    ``<surface>/<index>.npz`` per finished job, holding the job's arrays and its point (as
    canonical JSON). Each part is written atomically, so after a kill :meth:`done` lists
    exactly the jobs whose results are whole. Opening a directory that holds another key's
    parts (the calibration's inputs changed) clears it: those results belong to another
    calibration. A non-empty directory without a ``KEY`` file is refused (TableError)
    rather than deleted: it is not ours.

    Not safe for two processes at once; :class:`FileLock` serializes calibrations.
    """

    def __init__(self, directory: Path | str, *, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key = {key!r} must be a non-empty string (a content hash)")
        self.directory = Path(directory)
        self.key = key
        self._open()

    def _open(self) -> None:
        stamp = {"key": self.key, "format": _PARTS_FORMAT}
        key_file = self.directory / _KEY_FILE
        if self.directory.exists():
            try:
                found = json.loads(key_file.read_text(encoding="utf-8"))
            except FileNotFoundError:
                if any(self.directory.iterdir()):
                    raise TableError(
                        f"{self.directory} is not empty and holds no {_KEY_FILE} file: it is "
                        f"not a partial-results directory of circuitsim. Move it away or "
                        f"choose another --out.") from None
                found = None
            except (OSError, ValueError):
                found = {}  # unreadable stamp: treat as stale
            if found == stamp:
                return
            if found is not None:
                self.clear()
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(key_file, lambda tmp: tmp.write_text(
            json.dumps(stamp, sort_keys=True) + "\n", encoding="utf-8"))

    def _surface_dir(self, surface: str) -> Path:
        if not isinstance(surface, str) or not _SAFE_NAME_RE.match(surface):
            raise ValueError(f"surface = {surface!r}: expected a name of letters, digits, "
                             f"'_', '.' and '-' (not starting with '.' or '-')")
        return self.directory / surface

    def _part(self, surface: str, index: int) -> Path:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index = {index!r} must be a whole number >= 0")
        return self._surface_dir(surface) / f"{int(index)}.npz"

    def done(self, surface: str) -> set[int]:
        """Indices of the jobs of ``surface`` whose results are stored."""
        folder = self._surface_dir(surface)
        if not folder.is_dir():
            return set()
        found = set()
        for entry in folder.iterdir():
            match = _PART_RE.match(entry.name)
            if match:
                found.add(int(match.group(1)))
        return found

    def save(self, surface: str, index: int, point: Mapping[str, Any],
             result: Mapping[str, Any]) -> None:
        """Store one job's ``result`` (name -> array) with its ``point``, atomically.

        Arrays must be numeric, bool or fixed-width strings (no Python objects: parts are
        read back without pickle).
        """
        target = self._part(surface, index)
        arrays: dict[str, np.ndarray] = {}
        for name, value in result.items():
            if not isinstance(name, str) or not name or name == _POINT_ENTRY or "/" in name:
                raise ValueError(f"{surface}[{index}]: result name {name!r} is not allowed")
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise TypeError(f"{surface}[{index}]: result {name!r} has dtype object; "
                                f"only numeric, bool or string arrays can be stored")
            arrays[name] = array
        arrays[_POINT_ENTRY] = np.array(_dumps(_canonical(point)))
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(target, write)

    def load(self, surface: str, index: int, point: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The stored result of job ``index`` of ``surface``.

        TableError if it is missing, unreadable, or was stored for a different ``point``
        (the sweep changed under the same key: a bug, never silently mixed).
        """
        target = self._part(surface, index)
        try:
            with np.load(target, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise TableError(f"{target}: no stored result for job {index} of surface "
                             f"{surface!r}") from None
        except Exception as err:  # zipfile.BadZipFile, ValueError, OSError, EOFError...
            raise TableError(f"{target}: stored result of job {index} of surface {surface!r} "
                             f"is unreadable ({type(err).__name__}: {err}); delete the file "
                             f"and run the calibration again to recompute it") from err
        stored = arrays.pop(_POINT_ENTRY, None)
        expected = _dumps(_canonical(point))
        if stored is None or str(stored) != expected:
            raise TableError(f"{target}: stored result of job {index} of surface {surface!r} "
                             f"was computed for point {None if stored is None else str(stored)}"
                             f", not {expected}; delete {self.directory} and run the "
                             f"calibration again")
        return arrays

    def clear(self) -> None:
        """Remove the directory and everything in it (after the final table is written)."""
        if self.directory.exists():
            shutil.rmtree(self.directory)


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------

def _scalar(value: Any) -> Any:
    """An attribute value as read back: numpy scalars and bytes become Python scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attr_items(attrs: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """Split ``attrs`` into HDF5-storable values, JSON-encoding the non-scalar ones."""
    stored: dict[str, Any] = {}
    encoded: list[str] = []
    for name, value in attrs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: attribute name {name!r} must be a non-empty string")
        value = _scalar(value)
        fits = not isinstance(value, int) or isinstance(value, bool) \
            or -2**63 <= value < 2**63  # HDF5 stores 64-bit integers
        if isinstance(value, (bool, int, float, str)) and fits:
            stored[name] = value
        else:
            stored[name] = _dumps(_canonical(value))
            encoded.append(name)
    return stored, sorted(encoded)


def _write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any], where: str) -> None:
    stored, encoded = _attr_items(attrs, where)
    if _JSON_ATTR in stored:
        raise ValueError(f"{where}: attribute name {_JSON_ATTR!r} is reserved")
    for name, value in stored.items():
        obj.attrs[name] = value
    if encoded:
        obj.attrs[_JSON_ATTR] = _dumps(encoded)


def _read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    raw = {name: _scalar(obj.attrs[name]) for name in obj.attrs}
    encoded = json.loads(raw.pop(_JSON_ATTR, "[]"))
    for name in encoded:
        raw[name] = json.loads(raw[name])
    return raw


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{what} name {name!r} must be a non-empty string without '/'")
    return name


def _storable(array: Any, what: str) -> np.ndarray:
    data = np.asarray(array)
    if data.dtype.kind not in "biufc":
        raise TypeError(f"{what}: dtype {data.dtype} cannot be stored; use numbers or bools")
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    return np.asarray(data, order="C")


def _validated(name: str, surface: SurfaceData) -> SurfaceData:
    """``surface`` with arrays ready to store; ValueError/TypeError naming what is wrong."""
    where = f"surface {name!r}"
    axes: dict[str, Array] = {}
    for axis, arr in surface.axes.items():
        _check_name(axis, f"{where}: axis")
        data = _storable(arr.data, f"{where}: axis {axis!r}")
        if data.ndim != 1:
            raise ValueError(f"{where}: axis {axis!r} must be 1-D, has shape {data.shape}")
        axes[axis] = Array(data, str(arr.unit), str(arr.description))
    if set(surface.dims) != set(surface.datasets):
        raise ValueError(f"{where}: dims must name every dataset exactly: datasets "
                         f"{sorted(surface.datasets)}, dims given for {sorted(surface.dims)}")
    datasets: dict[str, Array] = {}
    dims: dict[str, tuple[str, ...]] = {}
    for key, arr in surface.datasets.items():
        _check_name(key, f"{where}: dataset")
        if key == _AXES_GROUP:
            raise ValueError(f"{where}: dataset name {key!r} is reserved for the axes group")
        data = _storable(arr.data, f"{where}: dataset {key!r}")
        names = tuple(surface.dims[key])
        unknown = [d for d in names if d not in axes]
        if unknown:
            raise ValueError(f"{where}: dataset {key!r} has dims {list(names)}, but "
                             f"{unknown} are not axes (axes: {sorted(axes)})")
        expected = tuple(len(axes[d].data) for d in names)
        if data.shape[:len(names)] != expected:
            raise ValueError(f"{where}: dataset {key!r} has shape {data.shape}; its dims "
                             f"{list(names)} need leading shape {expected}")
        datasets[key] = Array(data, str(arr.unit), str(arr.description))
        dims[key] = names
    return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=dict(surface.attrs))


def _checksum(root_attrs: Mapping[str, Any], surfaces: Mapping[str, SurfaceData]) -> str:
    """SHA-256 over everything stored except the checksum itself and ``complete``.

    Computed from the values as :func:`open_table` reads them back, so writing and reading
    agree bit for bit.
    """
    digest = hashlib.sha256()

    def feed_text(text: str) -> None:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)

    def feed_array(label: str, arr: Array, extra: Any = None) -> None:
        data = np.asarray(arr.data, order="C")
        feed_text(_dumps([label, arr.unit, arr.description, data.dtype.str,
                          list(data.shape), extra]))
        digest.update(data.tobytes())

    attrs = {k: v for k, v in root_attrs.items() if k not in (_CHECKSUM_ATTR, _COMPLETE_ATTR)}
    feed_text(_dumps(_canonical(attrs)))
    for name in sorted(surfaces):
        surface = surfaces[name]
        feed_text(_dumps(["surface", name, _canonical(dict(surface.attrs))]))
        for axis in sorted(surface.axes):
            feed_array(f"axis:{axis}", surface.axes[axis])
        for key in sorted(surface.datasets):
            feed_array(f"dataset:{key}", surface.datasets[key], list(surface.dims[key]))
    return digest.hexdigest()


def _roundtrip_attrs(attrs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``attrs`` as :func:`open_table` will return them (JSON-encoded values decoded)."""
    stored, encoded = _attr_items(attrs, where)
    return {k: (json.loads(v) if k in encoded else v) for k, v in stored.items()}


def write_table(path: Path | str, *, surfaces: Mapping[str, SurfaceData],
                attrs: Mapping[str, Any]) -> None:
    """Write ``surfaces`` and the provenance ``attrs`` to the HDF5 file ``path``, atomically.

    Layout in the module docstring. ``attrs`` should carry ``content_hash`` (what
    :func:`open_table`'s ``expected_hash`` is checked against) and the provenance (creation
    time, wall time, SPICE runs, ...); ``schema_version``, ``complete`` and ``data_sha256``
    are set here and may not be passed. Surfaces are validated first (every dataset's
    leading shape matches its dims' axes; ValueError/TypeError naming the problem). The
    file appears at ``path`` only when whole: written to a temporary file beside it,
    fsynced and renamed; on any failure the temporary file is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    reserved = sorted(_RESERVED_ROOT & set(attrs))
    if reserved:
        raise ValueError(f"write_table: attributes {reserved} are set by write_table itself")
    if not surfaces:
        raise ValueError("write_table: no surfaces to write")
    ready = {_check_name(name, "surface"): _validated(name, s) for name, s in surfaces.items()}
    if _AXES_GROUP in ready:
        raise ValueError(f"surface name {_AXES_GROUP!r} is not allowed")
    for name, surface in ready.items():
        _roundtrip_attrs(surface.attrs, f"surface {name!r}")  # validates names early
    root = dict(_roundtrip_attrs(attrs, "table"))
    root[_SCHEMA_ATTR] = SCHEMA_VERSION
    as_read = {name: dataclasses.replace(
        s, attrs=_roundtrip_attrs(s.attrs, f"surface {name!r}")) for name, s in ready.items()}
    checksum = _checksum(root, as_read)

    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _write_attrs(f, attrs, "table")
            f.attrs[_SCHEMA_ATTR] = SCHEMA_VERSION
            for name, surface in ready.items():
                group = f.create_group(name)
                _write_attrs(group, surface.attrs, f"surface {name!r}")
                axes = group.create_group(_AXES_GROUP)
                for axis, arr in surface.axes.items():
                    ds = axes.create_dataset(axis, data=arr.data)
                    ds.attrs["unit"] = arr.unit
                    ds.attrs["description"] = arr.description
                for key, arr in surface.datasets.items():
                    ds = group.create_dataset(key, data=arr.data)
                    ds.attrs["unit"] = arr.unit
                    ds.attrs["description"] = arr.description
                    ds.attrs.create("dims", np.array(surface.dims[key], dtype=object),
                                    dtype=h5py.string_dtype())
            f.attrs[_CHECKSUM_ATTR] = checksum
            f.flush()
            f.attrs[_COMPLETE_ATTR] = True  # last: only a whole file carries it

    atomic_write(path, write)


@dataclass(frozen=True)
class Table:
    """A calibration read into memory by :func:`open_table` (the file is closed)."""

    path: Path
    attrs: Mapping[str, Any]
    surfaces: Mapping[str, SurfaceData]

    def surface(self, name: str) -> SurfaceData:
        """The surface ``name``; TableError listing the ones this table holds."""
        try:
            return self.surfaces[name]
        except KeyError:
            raise TableError(f"{self.path}: no surface {name!r}; this calibration holds "
                             f"{sorted(self.surfaces)}") from None

    def hardware(self) -> HardwareConfig:
        """The hardware configuration this table was calibrated for (from its manifest)."""
        try:
            manifest = json.loads(self.attrs["manifest_json"])
            return HardwareConfig.from_dict(manifest["hardware"])
        except (KeyError, TypeError, ValueError) as err:
            raise TableError(f"{self.path}: the table's manifest holds no readable hardware "
                             f"configuration ({type(err).__name__}: {err}); {_RECALIBRATE}"
                             ) from err

    def read_window(self) -> tuple[float, float]:
        """The nominal cell's read window ``(g(n_min), g(n_max))``, S: the ``cell_read``
        surface's 1T1R read conductance at the device's state bounds. The one source of
        the window for everything built from the table (levels, weight mapping, noise)."""
        d = self.hardware().device
        self.check_range("cell_read", "state", [d.n_min, d.n_max])
        cell = self.surface("cell_read")
        try:
            states = np.asarray(cell.axes["state"].data, float)
            g = np.asarray(cell.datasets["g_read"].data, float)
        except KeyError as err:
            raise TableError(f"{self.path}: surface 'cell_read' lacks {err}; "
                             f"{_RECALIBRATE}") from None
        lo, hi = (float(v) for v in np.interp([d.n_min, d.n_max], states, g))
        if not hi > lo > 0:
            raise TableError(f"{self.path}: the cell's read window [{lo!r}, {hi!r}] S is not "
                             f"increasing; {_RECALIBRATE}")
        return lo, hi

    def check_range(self, surface: str, axis: str, values: Any) -> None:
        """TableError if any of ``values`` lies outside ``axis``'s calibrated [min, max].

        Lookups outside the calibrated range are refused rather than extrapolated. NaN
        counts as outside. The message names the surface, the axis, the first offending
        value, how many there are, and the range.
        """
        data = self.surface(surface)
        try:
            grid = data.axes[axis].data
        except KeyError:
            raise TableError(f"{self.path}: surface {surface!r} has no axis {axis!r}; axes: "
                             f"{sorted(data.axes)}") from None
        unit = data.axes[axis].unit
        lo, hi = float(np.min(grid)), float(np.max(grid))
        arr = np.asarray(values, dtype=float)
        bad = ~((arr >= lo) & (arr <= hi))
        if np.any(bad):
            first = arr[bad].flat[0]
            raise TableError(
                f"{surface}: {axis} = {first:g} {unit} lies outside the calibrated range "
                f"[{lo:g}, {hi:g}] {unit} ({int(np.count_nonzero(bad))} of {arr.size} values "
                f"outside); the table is not extrapolated: recalibrate with a wider sweep")


def _table_error(path: Path, problem: str, advice: str = _RECALIBRATE) -> TableError:
    return TableError(f"{path}: {problem}; {advice}")


def _read_surface(group: h5py.Group) -> SurfaceData:
    axes_group = group[_AXES_GROUP]
    axes = {}
    for axis in axes_group:
        ds = axes_group[axis]
        axes[axis] = Array(np.asarray(ds[()]), _scalar(ds.attrs["unit"]),
                           _scalar(ds.attrs["description"]))
    datasets: dict[str, Array] = {}
    dims: dict[str, tuple[str, ...]] = {}
    for key in group:
        if key == _AXES_GROUP:
            continue
        ds = group[key]
        if not isinstance(ds, h5py.Dataset):
            raise ValueError(f"unexpected member {ds.name}")
        datasets[key] = Array(np.asarray(ds[()]), _scalar(ds.attrs["unit"]),
                              _scalar(ds.attrs["description"]))
        dims[key] = tuple(_scalar(d) for d in ds.attrs["dims"])
    return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=_read_attrs(group))


def open_table(path: Path | str, *, expected_hash: str | None = None) -> Table:
    """Read and validate the calibration at ``path``; the file is closed on return.

    Checks, each a TableError that says what to do: the file exists; it is a readable HDF5
    file (not truncated or otherwise corrupted); its ``schema_version`` is
    :data:`SCHEMA_VERSION`; it carries the ``complete`` marker; the stored ``data_sha256``
    matches its contents; and, with ``expected_hash``, its ``content_hash`` attribute
    equals it (the file belongs to another calibration otherwise). A file that fails any
    check is never returned.
    """
    path = Path(path)
    if not path.exists():
        raise _table_error(path, "no calibration table here",
                           "run `circuitsim calibrate` to create it")
    try:
        with h5py.File(path, "r") as f:
            attrs = _read_attrs(f)
            version = attrs.get(_SCHEMA_ATTR)
            if version != SCHEMA_VERSION:
                raise _table_error(
                    path, f"schema version {version!r}, but this circuitsim reads version "
                          f"{SCHEMA_VERSION}")
            if attrs.get(_COMPLETE_ATTR) is not True:
                raise _table_error(path, "incomplete table (no 'complete' marker: written by "
                                         "an interrupted calibration or copied mid-write)")
            surfaces = {name: _read_surface(f[name]) for name in f}
    except TableError:
        raise
    except OSError as err:
        raise _table_error(path, f"not a readable HDF5 file, truncated or corrupted ({err})"
                           ) from err
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as err:
        raise _table_error(path, f"malformed calibration table ({type(err).__name__}: {err})"
                           ) from err
    stored = attrs.get(_CHECKSUM_ATTR)
    if not isinstance(stored, str) or stored != _checksum(attrs, surfaces):
        raise _table_error(path, "checksum mismatch: the stored data is corrupted")
    if expected_hash is not None and attrs.get("content_hash") != expected_hash:
        raise _table_error(path, f"content hash {attrs.get('content_hash')!r} differs from the "
                                 f"expected {expected_hash!r}: the file belongs to another "
                                 f"calibration")
    public = {k: v for k, v in attrs.items() if k not in (_COMPLETE_ATTR,)}
    return Table(path=path, attrs=public, surfaces=surfaces)

