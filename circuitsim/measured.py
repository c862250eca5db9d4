"""Measured pulse data of 1T1R cells: the CSV format ``circuitsim device fit`` reads.

One row per read. Required columns (others are ignored)::

    device,pulse,polarity,amplitude_v,width_s,gate_v,conductance_us

* ``device``: a label; a file may hold several devices (for their device-to-device spread).
* ``pulse``: 0 for the read before the first pulse, then 1, 2, ... in order, per device.
* ``polarity``: empty on pulse 0; ``set`` or ``reset`` for a write pulse followed by a
  read; ``read`` for a read with no pulse before it (repeated reads give the read noise).
* ``amplitude_v``, ``width_s``, ``gate_v``: the pulse's amplitude (V, on the bit line for
  SET, on the source line for RESET), width (s) and word-line voltage (V); empty on pulse 0
  and on ``read`` rows.
* ``conductance_us``: the cell's read conductance after that pulse (read current over the
  configuration's ``drive.v_read_v``, read gate ``array.v_gate_read_v``), uS.

Every problem is reported with its line in the file and its column.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netlists.config import HardwareConfig
from netlists.device import BulkSwitchingModel
from netlists.errors import ConfigError
from netlists.files import atomic_write

__all__ = ["COLUMNS", "DeviceTrace", "MeasuredData", "read_measured", "write_measured"]

COLUMNS = ("device", "pulse", "polarity", "amplitude_v", "width_s", "gate_v",
           "conductance_us")
_KINDS = ("set", "reset", "read")
#: A device's median read may lie this far outside the configured device's window before it
#: is taken for a unit mistake.
UNIT_SLACK = 30.0


@dataclass(frozen=True)
class DeviceTrace:
    """One device's reads: ``kind[k]`` is what came before read ``k`` (``""`` for the first
    read, ``set``/``reset``/``read``); amplitude, width and gate are NaN where no pulse."""

    name: str
    kind: tuple[str, ...]
    amplitude_v: np.ndarray
    width_s: np.ndarray
    gate_v: np.ndarray
    conductance_us: np.ndarray

    @property
    def pulses(self) -> int:
        return sum(k in ("set", "reset") for k in self.kind)


@dataclass(frozen=True)
class MeasuredData:
    devices: tuple[DeviceTrace, ...]
    path: str

    @property
    def reads(self) -> int:
        return sum(len(d.kind) for d in self.devices)

    @property
    def pulses(self) -> int:
        return sum(d.pulses for d in self.devices)


def _fail(path: str, line: int, column: str | None, message: str) -> ConfigError:
    where = f"line {line}" + (f", column {column!r}" if column else "")
    return ConfigError(f"{path}: {where}: {message}", field="--data")


def _number(path: str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, line, column, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise _fail(path, line, column, f"{text!r} must be a finite number (NaN and "
                                        "infinity are not measurements)")
    return value


def read_measured(path: str | os.PathLike[str], hw: HardwareConfig) -> MeasuredData:
    """Read and check a measured-data CSV against the configuration's ranges."""
    path_s = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"data file {path_s!r} does not exist", field="--data") from None
    except IsADirectoryError:
        raise ConfigError(f"data file {path_s!r} is a folder: name the CSV file",
                          field="--data") from None
    except UnicodeDecodeError:
        raise ConfigError(f"data file {path_s!r} is not UTF-8 text", field="--data") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise ConfigError(f"data file {path_s!r} is empty: it needs a header with the "
                          f"columns {', '.join(COLUMNS)}", field="--data")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise _fail(path_s, 1, None, f"the header lacks the column(s) {', '.join(missing)} "
                                     f"(needed: {', '.join(COLUMNS)})")
    col = {c: header.index(c) for c in COLUMNS}
    drv, vmax = hw.drive, hw.device.v_valid_max_v
    traces: dict[str, list[tuple]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise _fail(path_s, line, None, f"{len(row)} fields, the header has {len(header)}")
        get = {c: row[col[c]].strip() for c in COLUMNS}
        name = get["device"]
        if not name:
            raise _fail(path_s, line, "device", "is empty: give each device a label")
        try:
            pulse = int(get["pulse"])
        except ValueError:
            raise _fail(path_s, line, "pulse", f"{get['pulse']!r} is not a whole number") \
                from None
        seen = traces.setdefault(name, [])
        expected = len(seen)
        if pulse != expected:
            raise _fail(path_s, line, "pulse",
                        f"device {name!r} has pulse {pulse} where {expected} comes next: "
                        "number each device's reads 0, 1, 2, ... in order")
        kind = get["polarity"].lower()
        g = _number(path_s, line, "conductance_us", get["conductance_us"])
        if g <= 0:
            raise _fail(path_s, line, "conductance_us", f"{g!r} uS must be positive")
        if pulse == 0:
            if kind:
                raise _fail(path_s, line, "polarity",
                            f"{kind!r} on pulse 0: the first row is the read before any "
                            "pulse (leave it empty)")
            seen.append(("", math.nan, math.nan, math.nan, g, line))
            continue
        if kind not in _KINDS:
            raise _fail(path_s, line, "polarity", f"{get['polarity']!r} must be one of "
                                                  f"{', '.join(_KINDS)}")
        if kind == "read":
            seen.append(("read", math.nan, math.nan, math.nan, g, line))
            continue
        amp = _number(path_s, line, "amplitude_v", get["amplitude_v"])
        width = _number(path_s, line, "width_s", get["width_s"])
        gate = _number(path_s, line, "gate_v", get["gate_v"])
        if not 0.0 < amp <= vmax:
            hint = " (in mV? amplitudes are in V)" if amp > 20 else ""
            raise _fail(path_s, line, "amplitude_v", f"{amp!r} V is outside the model's "
                                                     f"validity (0, {vmax:g}] V{hint}")
        if not 2 * drv.t_edge_s < width <= 1e-3:
            hint = " (in ns or us? widths are in s)" if width > 1e-3 else ""
            raise _fail(path_s, line, "width_s",
                        f"{width!r} s must exceed two edges (2 x drive.t_edge_s = "
                        f"{2 * drv.t_edge_s:g} s) and be at most 1 ms{hint}")
        if not 0.0 <= gate <= 5.0:
            raise _fail(path_s, line, "gate_v", f"{gate!r} V is outside [0, 5] V")
        seen.append((kind, amp, width, gate, g, line))
    if not traces:
        raise ConfigError(f"data file {path_s!r} has a header but no rows", field="--data")
    devices = []
    for name, seen in traces.items():
        g = np.array([s[4] for s in seen])
        devices.append(DeviceTrace(
            name=name, kind=tuple(s[0] for s in seen),
            amplitude_v=np.array([s[1] for s in seen]), width_s=np.array([s[2] for s in seen]),
            gate_v=np.array([s[3] for s in seen]), conductance_us=g))
    _check_units(path_s, hw, devices, traces)
    return MeasuredData(devices=tuple(devices), path=path_s)


def _check_units(path: str, hw: HardwareConfig, devices: list[DeviceTrace],
                 traces: dict[str, list[tuple]]) -> None:
    """Each device's conductances must be within :data:`UNIT_SLACK` of the configured
    device's window (its zero-bias conductance at ``n_min`` and ``n_max``): reads off by
    orders of magnitude (S, mS or nS given for uS, or resistances) are refused."""
    model = BulkSwitchingModel(hw.device)
    lo, hi = (float(g) * 1e6 for g in model.small_signal_conductance(
        np.array([hw.device.n_min, hw.device.n_max])))
    for d in devices:
        median = float(np.median(d.conductance_us))
        line = traces[d.name][0][5]
        if median < lo / UNIT_SLACK:
            raise _fail(path, line, "conductance_us",
                        f"device {d.name!r}: the median conductance {median:.3g} uS is far "
                        f"below the configured device's window ({lo:.3g}-{hi:.3g} uS); were "
                        "they written in S or mS? Give them in uS (S x 1e6, mS x 1e3)")
        if median > hi * UNIT_SLACK:
            raise _fail(path, line, "conductance_us",
                        f"device {d.name!r}: the median conductance {median:.3g} uS is far "
                        f"above the configured device's window ({lo:.3g}-{hi:.3g} uS); were "
                        "they written in nS or as resistances? Give them in uS")


def write_measured(path: str | os.PathLike[str], data: MeasuredData) -> None:
    """Write ``data`` in the format above, atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(COLUMNS)
            for d in data.devices:
                for k, kind in enumerate(d.kind):
                    pulse = kind in ("set", "reset")
                    out.writerow([d.name, k, kind,
                                  f"{d.amplitude_v[k]:.6g}" if pulse else "",
                                  f"{d.width_s[k]:.6g}" if pulse else "",
                                  f"{d.gate_v[k]:.6g}" if pulse else "",
                                  f"{d.conductance_us[k]:.8g}"])

    atomic_write(Path(path), write)
