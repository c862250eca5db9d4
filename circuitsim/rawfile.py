"""Strict reader of ngspice raw files (the ``-r FILE`` output of ``ngspice -b``).

A raw file is one or more *plots*. Each plot is a text header::

    Title: <deck title>
    Date: ...
    Plotname: Transient Analysis
    Flags: real
    No. Variables: 3
    No. Points: 516
    Variables:
    <tab>0<tab>time<tab>time
    <tab>1<tab>v(out)<tab>voltage
    ...
    Values:            (ASCII: per point, the point index then one value per variable)
    Binary:            (binary: No. Points x No. Variables little-endian float64)

followed by the data. ngspice writes the header first and patches ``No. Points`` when the
analysis ends, so a file from a killed or crashed run can declare fewer or more points than
it holds. This reader is strict on purpose: a missing header field, a count that does not
match the data, trailing garbage, or complex data raises
:class:`~netlists.errors.SimulatorError` instead of returning a partial plot.

Only real data is supported (``.op``, ``.dc`` and ``.tran``, which is all the runner
submits); both the ASCII and the binary encoding are read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from netlists.errors import SimulatorError

__all__ = ["RawPlot", "parse_raw", "read_raw"]

# Header fields every plot must carry before its variable list.
_REQUIRED = ("plotname", "flags", "no. variables", "no. points")
_TITLE_AT_LINE_START = re.compile(rb"^Title:", re.MULTILINE)


@dataclass(frozen=True)
class RawPlot:
    """One plot of a raw file.

    ``names`` and ``types`` are the variables in file order, exactly as ngspice wrote them
    (e.g. ``time``/``time``, ``v(out)``/``voltage``, ``i(v1)``/``current``); ``values`` has
    shape ``(points, variables)``.
    """

    title: str
    plotname: str
    flags: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    values: np.ndarray

    @property
    def points(self) -> int:
        """Number of points (rows) in the plot."""
        return int(self.values.shape[0])

    def vectors(self) -> dict[str, np.ndarray]:
        """The plot as ``{name: 1-D float64 array}``, in file order (copies, contiguous)."""
        return {name: np.ascontiguousarray(self.values[:, k])
                for k, name in enumerate(self.names)}


def read_raw(path: str | os.PathLike[str]) -> list[RawPlot]:
    """Read every plot of the raw file at ``path`` (see :func:`parse_raw`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise SimulatorError(f"cannot read raw file {os.fspath(path)!r}: {err}") from err
    return parse_raw(data, source=os.fspath(path))


def parse_raw(data: bytes, *, source: str = "raw file") -> list[RawPlot]:
    """Parse the raw-file bytes ``data`` into its plots, in file order.

    ``source`` names the data in error messages. Raises ``SimulatorError`` when the data is
    empty, truncated, inconsistent with its header, or holds complex values.
    """
    if not data.strip():
        raise SimulatorError(f"{source} is empty: ngspice wrote no plot")
    plots: list[RawPlot] = []
    pos = 0
    while True:
        plot, pos = _parse_plot(data, pos, source)
        plots.append(plot)
        rest = data[pos:]
        if not rest.strip():
            return plots
        if not rest.lstrip().startswith(b"Title:"):
            raise SimulatorError(
                f"{source}: unexpected data after plot {plot.plotname!r} "
                f"({len(rest.strip())} bytes); the file is corrupt")
        pos += len(rest) - len(rest.lstrip())


def _parse_plot(data: bytes, pos: int, source: str) -> tuple[RawPlot, int]:
    """Parse the plot starting at byte ``pos``; return it and the position after its data."""
    header: dict[str, str] = {}
    names: list[str] = []
    types: list[str] = []
    in_variables = False
    encoding = ""
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise SimulatorError(f"{source} is truncated inside a plot header")
        line = data[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if line in ("Values:", "Binary:"):
            encoding = line[:-1].lower()
            break
        if in_variables:
            fields = line.split()
            if len(fields) < 3 or not fields[0].isdigit():
                raise SimulatorError(f"{source}: malformed variable line {line!r}")
            if int(fields[0]) != len(names):
                raise SimulatorError(
                    f"{source}: variable index {fields[0]} out of order (expected {len(names)})")
            names.append(fields[1])
            types.append(fields[2])
            continue
        if line == "Variables:":
            in_variables = True
            continue
        key, sep, value = line.partition(":")
        if not sep:
            if line.strip():
                raise SimulatorError(f"{source}: malformed header line {line!r}")
            continue
        header[key.strip().lower()] = value.strip()

    missing = [key for key in _REQUIRED if key not in header]
    if missing or not in_variables:
        raise SimulatorError(
            f"{source}: plot header lacks {', '.join(missing) or 'the variable list'}")
    flags = header["flags"].lower()
    if "complex" in flags or "real" not in flags:
        raise SimulatorError(
            f"{source}: plot {header['plotname']!r} has flags {header['flags']!r}; "
            "only real data is supported")
    try:
        n_vars = int(header["no. variables"])
        n_points = int(header["no. points"])
    except ValueError:
        raise SimulatorError(
            f"{source}: bad counts in header (variables {header['no. variables']!r}, "
            f"points {header['no. points']!r})") from None
    if n_vars != len(names) or n_vars < 1 or n_points < 0:
        raise SimulatorError(
            f"{source}: header declares {n_vars} variables but lists {len(names)}")

    if encoding == "binary":
        values, pos = _binary_values(data, pos, n_points, n_vars, source)
    else:
        values, pos = _ascii_values(data, pos, n_points, n_vars, source)
    plot = RawPlot(title=header.get("title", ""), plotname=header["plotname"], flags=flags,
                   names=tuple(names), types=tuple(types), values=values)
    return plot, pos


def _binary_values(data: bytes, pos: int, n_points: int, n_vars: int,
                   source: str) -> tuple[np.ndarray, int]:
    size = 8 * n_points * n_vars
    if len(data) - pos < size:
        raise SimulatorError(
            f"{source} is truncated: {n_points} points x {n_vars} variables need {size} "
            f"bytes of binary data, found {len(data) - pos}")
    values = np.frombuffer(data, dtype="<f8", count=n_points * n_vars, offset=pos)
    return values.reshape(n_points, n_vars).astype(np.float64), pos + size


def _ascii_values(data: bytes, pos: int, n_points: int, n_vars: int,
                  source: str) -> tuple[np.ndarray, int]:
    match = _TITLE_AT_LINE_START.search(data, pos)
    end = match.start() if match else len(data)
    tokens = data[pos:end].split()
    expected = n_points * (n_vars + 1)
    if len(tokens) != expected:
        what = "truncated" if len(tokens) < expected else "longer than its header says"
        raise SimulatorError(
            f"{source} is {what}: {n_points} points x {n_vars} variables need {expected} "
            f"numbers (with point indices), found {len(tokens)}")
    if any(b"," in token for token in tokens[1:n_vars + 1]):
        raise SimulatorError(f"{source}: complex values are not supported")
    try:
        table = np.array(tokens, dtype=np.float64).reshape(n_points, n_vars + 1)
    except ValueError as err:
        raise SimulatorError(f"{source}: non-numeric value in the data: {err}") from err
    if not np.array_equal(table[:, 0], np.arange(n_points, dtype=np.float64)):
        raise SimulatorError(f"{source}: point indices are not 0..{n_points - 1}; corrupt data")
    return np.ascontiguousarray(table[:, 1:]), end
