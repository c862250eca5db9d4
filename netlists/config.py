"""Typed configuration of the hardware being modelled and of the solver.

Every block of the circuit is a frozen dataclass with one field per physical quantity; the
unit is in the field name (``r_wire_row_ohm``, ``v_read_v``) or, for dimensionless numbers,
in the field's ``doc``. Values are checked once, at construction, against the range in the
field's metadata; a bad value raises :class:`~netlists.errors.ConfigError` naming the field,
the value and the allowed range. ``HardwareConfig`` groups the blocks; ``SolverConfig`` holds
what only affects how ngspice is driven. Both load from and save to TOML.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import tomli_w

from netlists.errors import ConfigError
from netlists.files import atomic_write

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DeviceParams",
    "TransistorParams",
    "ArrayParams",
    "TIAParams",
    "ADCParams",
    "DriveParams",
    "LevelsParams",
    "WriteVerifyParams",
    "HardwareConfig",
    "SurrogateConfig",
    "SolverConfig",
    "PRESETS",
    "preset",
    "load_config",
    "load_surrogate_config",
    "read_toml",
    "save_config",
]


def _q(default: Any, lo: float | None = None, hi: float | None = None, *,
       lo_open: bool = False, doc: str = "") -> Any:
    """A numeric field with an allowed range ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "doc": doc})


def _optional(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
              doc: str = "") -> Any:
    """A numeric field that may be left unset (``None``; absent from TOML)."""
    return field(default=None, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "doc": doc,
                                         "optional": True})


def _choice(default: str, choices: tuple[str, ...], *, doc: str = "") -> Any:
    return field(default=default, metadata={"choices": choices, "doc": doc})


class _Validated:
    """Mixin: range-check every field declared with :func:`_q` or :func:`_choice`."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            name = f"{self.section}.{f.name}" if self.section else f.name
            meta = f.metadata
            if "choices" in meta:
                if value not in meta["choices"]:
                    raise ConfigError(
                        f"{name} = {value!r} is not allowed: choose one of {list(meta['choices'])}")
                continue
            if "lo" not in meta or (value is None and meta.get("optional")):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} = {value!r} must be a number")
            if isinstance(f.default, int) and not isinstance(f.default, bool) \
                    and not isinstance(value, int):
                raise ConfigError(f"{name} = {value!r} must be a whole number")
            if not math.isfinite(value):
                raise ConfigError(f"{name} = {value!r} must be finite")
            lo, hi = meta["lo"], meta["hi"]
            too_low = lo is not None and (value <= lo if meta["lo_open"] else value < lo)
            too_high = hi is not None and value > hi
            if too_low or too_high:
                left = "(" if meta["lo_open"] else "["
                lo_s = "-inf" if lo is None else f"{lo:g}"
                hi_s = "inf" if hi is None else f"{hi:g}"
                unit = f" ({meta['doc']})" if meta["doc"] else ""
                raise ConfigError(
                    f"{name} = {value!r} is out of range: allowed {left}{lo_s}, {hi_s}]{unit}")
        self._check()

    def _check(self) -> None:
        """Cross-field checks; overridden where fields constrain each other."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The block from its TOML table ``[section]``, validated."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"[{cls.section}] must be a table of fields, got {data!r}")
        return _construct(cls, cls.section, data)


@dataclass(frozen=True)
class DeviceParams(_Validated):
    """Bulk-switching (area-dependent, forming-free) RRAM compact model.

    The state is the oxygen-vacancy concentration ``N`` of the switching bulk, in units of
    1e26 m^-3. The equations, and where each value comes from, are in
    ``netlists/README.md`` and in the header of the rendered subcircuit.
    """

    section: ClassVar[str] = "device"

    area_nm2: float = _q(10000.0, 0.0, 1e8, lo_open=True, doc="device area, nm^2")
    thickness_nm: float = _q(5.0, 0.0, 1000.0, lo_open=True, doc="switching-layer thickness, nm")
    mobility_m2_vs: float = _q(2.0e-7, 0.0, 1.0, lo_open=True,
                               doc="electron mobility in the vacancy-doped bulk, m^2/(V s)")
    n_min: float = _q(0.5, 0.0, 100.0, lo_open=True, doc="lower bound of N, 1e26 m^-3")
    n_max: float = _q(6.3, 0.0, 100.0, lo_open=True, doc="upper bound of N, 1e26 m^-3")
    n_init: float = _q(5.9, 0.0, 100.0, lo_open=True,
                       doc="N of a pristine device (born in the high-conductance state), 1e26 m^-3")
    phi_b0_ev: float = _q(0.35, 0.0, 2.0, doc="barrier height at N -> 0, eV")
    alpha_b_ev: float = _q(0.07, 0.0, 2.0,
                           doc="image-force barrier lowering per (N / 1e26 m^-3)^(1/4), eV")
    j_b_s_m2: float = _q(1.2e14, 0.0, 1e20, lo_open=True,
                         doc="barrier conductance prefactor per area, S/m^2")
    v0_barrier_v: float = _q(0.3, 0.0, 10.0, lo_open=True,
                             doc="tunnel-barrier voltage scale of the sinh law, V")
    r_series_ohm: float = _q(1000.0, 0.0, 1e7, doc="electrode and contact series resistance, ohm")
    r_th_k_w: float = _q(3.0e5, 0.0, 1e9, doc="thermal resistance to ambient, K/W")
    tau_th_s: float = _q(1e-9, 0.0, 1e-3, lo_open=True, doc="thermal time constant, s")
    t_ambient_k: float = _q(300.0, 1.0, 600.0, doc="ambient temperature, K")
    ea_set_ev: float = _q(0.6, 0.0, 5.0, doc="ion-hopping activation energy, SET direction, eV")
    ea_reset_ev: float = _q(0.6, 0.0, 5.0, doc="ion-hopping activation energy, RESET direction, eV")
    nu_set_hz: float = _q(4e9, 0.0, 1e30, lo_open=True,
                          doc="rate prefactor, SET direction, (1e26 m^-3)/s")
    nu_reset_hz: float = _q(1.2e10, 0.0, 1e30, lo_open=True,
                            doc="rate prefactor, RESET direction, (1e26 m^-3)/s")
    hop_distance_nm: float = _q(0.86, 0.0, 10.0, lo_open=True, doc="ion-hopping distance, nm")
    z_vo: float = _q(2.0, 0.0, 6.0, lo_open=True, doc="charge number of an oxygen vacancy")
    p_window_set: float = _q(2.0, 0.0, 50.0, lo_open=True, doc="window exponent near n_max")
    p_window_reset: float = _q(1.0, 0.0, 50.0, lo_open=True, doc="window exponent near n_min")
    v_valid_max_v: float = _q(3.5, 0.0, 20.0, lo_open=True,
                              doc="largest |voltage| across a cell for which the model is valid, V")
    c2c_sigma: float = _q(0.1, 0.0, 2.0,
                          doc="cycle-to-cycle spread: log-normal sigma of the rate, per pulse")
    d2d_rate_sigma: float = _q(0.1, 0.0, 2.0,
                               doc="device-to-device spread: log-normal sigma of the rate")
    d2d_window_sigma: float = _q(0.03, 0.0, 1.0,
                                 doc="device-to-device spread: log-normal sigma of n_min and n_max")
    ea_retention_ev: float = _q(1.1, 0.0, 5.0,
                                doc="activation energy of vacancy diffusion at zero bias, eV")
    nu_retention_hz: float = _q(5.2e11, 0.0, 1e30,
                                doc="relaxation attempt rate at zero bias, 1/s (0: no drift)")

    def _check(self) -> None:
        if not self.n_min < self.n_max:
            raise ConfigError(
                f"device.n_min = {self.n_min!r} must be below device.n_max = {self.n_max!r}")
        if not self.n_min <= self.n_init <= self.n_max:
            raise ConfigError(
                f"device.n_init = {self.n_init!r} must lie in [n_min, n_max] = "
                f"[{self.n_min!r}, {self.n_max!r}]")


@dataclass(frozen=True)
class TransistorParams(_Validated):
    """NMOS access transistor of the 1T1R cell (BSIM4, 65 nm-class thick-oxide I/O device).

    Only the fields below are set in the model card; every other BSIM4 parameter keeps its
    default. The card is documented in ``netlists/README.md``.
    """

    section: ClassVar[str] = "transistor"

    w_um: float = _q(0.6, 0.0, 100.0, lo_open=True, doc="gate width, um")
    l_um: float = _q(0.28, 0.0, 100.0, lo_open=True, doc="gate length, um")
    vth0_v: float = _q(0.45, 0.0, 2.0, doc="long-channel threshold voltage, V")
    toxe_nm: float = _q(5.0, 0.5, 50.0, doc="electrical gate-oxide thickness, nm")
    u0_m2_vs: float = _q(0.03, 0.0, 1.0, lo_open=True, doc="low-field mobility, m^2/(V s)")
    vsat_m_s: float = _q(8.0e4, 0.0, 1e7, lo_open=True, doc="saturation velocity, m/s")
    rdsw_ohm_um: float = _q(300.0, 0.0, 1e5, doc="source/drain resistance per width, ohm um")


@dataclass(frozen=True)
class ArrayParams(_Validated):
    """The crossbar: rows are driven inputs, columns are summed into TIAs."""

    section: ClassVar[str] = "array"

    rows: int = _q(64, 1, 4096)
    cols: int = _q(64, 1, 4096)
    r_wire_row_ohm: float = _q(1.0, 0.0, 1e6, doc="row-line resistance per cell segment, ohm")
    r_wire_col_ohm: float = _q(1.0, 0.0, 1e6, doc="column-line resistance per cell segment, ohm")
    r_driver_ohm: float = _q(20.0, 0.0, 1e6, doc="output resistance of a row driver, ohm")
    v_gate_read_v: float = _q(2.5, 0.0, 5.0, doc="word-line (gate) voltage during a read, V")


@dataclass(frozen=True)
class TIAParams(_Validated):
    """Transimpedance amplifier: single-pole op-amp macro-model with a feedback resistor."""

    section: ClassVar[str] = "tia"

    r_feedback_ohm: float = _q(5000.0, 0.0, 1e9, lo_open=True, doc="feedback resistance, ohm")
    open_loop_gain: float = _q(1e4, 1.0, 1e9, doc="DC open-loop gain, V/V")
    gbw_hz: float = _q(500e6, 0.0, 1e12, lo_open=True, doc="gain-bandwidth product, Hz")
    v_rail_low_v: float = _q(-1.5, -10.0, 0.0, doc="lower output rail, V")
    v_rail_high_v: float = _q(1.5, 0.0, 10.0, doc="upper output rail, V")
    v_offset_v: float = _q(0.0, -0.1, 0.1, doc="input-referred offset voltage, V")
    v_clamp_knee_v: float = _q(0.05, 0.0, 1.0, lo_open=True,
                               doc="width of the smooth knee where the output meets a rail, V")
    # The supply: only the energy the rails deliver depends on it, never the output voltage.
    # 50 uA: a single-stage OTA of GBW 500 MHz into ~0.25 pF needs gm = 2 pi GBW C = 0.79 mS,
    # at gm/Id = 16 /V (moderate inversion; Jespers and Murmann, Systematic Design of Analog
    # CMOS Circuits, 2017) Id = 49 uA.
    i_quiescent_a: float = _q(50e-6, 0.0, 1.0,
                              doc="quiescent bias current from the upper to the lower supply, A")
    v_supply_high_v: float | None = _optional(0.0, 10.0,
                                              doc="upper supply, V (unset: v_rail_high_v, a "
                                                  "rail-to-rail output stage)")
    v_supply_low_v: float | None = _optional(-10.0, 0.0,
                                             doc="lower supply, V (unset: v_rail_low_v)")

    def _check(self) -> None:
        if self.supply_high_v < self.v_rail_high_v:
            raise ConfigError(f"tia.v_supply_high_v = {self.supply_high_v!r} must not be below "
                              f"tia.v_rail_high_v = {self.v_rail_high_v!r}",
                              field="tia.v_supply_high_v")
        if self.supply_low_v > self.v_rail_low_v:
            raise ConfigError(f"tia.v_supply_low_v = {self.supply_low_v!r} must not be above "
                              f"tia.v_rail_low_v = {self.v_rail_low_v!r}",
                              field="tia.v_supply_low_v")

    @property
    def supply_high_v(self) -> float:
        """The upper supply, V (the upper rail when unset)."""
        return self.v_rail_high_v if self.v_supply_high_v is None else self.v_supply_high_v

    @property
    def supply_low_v(self) -> float:
        """The lower supply, V (the lower rail when unset)."""
        return self.v_rail_low_v if self.v_supply_low_v is None else self.v_supply_low_v


@dataclass(frozen=True)
class ADCParams(_Validated):
    """Multi-cycle sampling ADC front-end, one shared by ``columns_per_adc`` columns."""

    section: ClassVar[str] = "adc"

    bits: int = _q(8, 1, 16)
    columns_per_adc: int = _q(8, 1, 4096)
    v_full_scale_v: float = _q(1.0, 0.0, 10.0, lo_open=True,
                               doc="accumulated voltage that maps to the top code, V")
    c_sample_f: float = _q(100e-15, 0.0, 1e-6, lo_open=True, doc="sampling capacitor, F")
    comparator_offset_v: float = _q(0.0, -0.5, 0.5, doc="comparator offset, V")
    inl_lsb: float = _q(0.0, -8.0, 8.0, doc="peak integral nonlinearity (bow), LSB")
    noise_v_rms: float = _q(0.0, 0.0, 0.5, doc="input-referred conversion noise, V rms")
    r_switch_on_ohm: float = _q(1000.0, 0.0, 1e7, lo_open=True,
                                doc="on-resistance of a sampling switch, ohm")


@dataclass(frozen=True)
class DriveParams(_Validated):
    """Read and write waveforms."""

    section: ClassVar[str] = "drive"

    v_read_v: float = _q(0.1, 0.0, 1.0, lo_open=True, doc="read (input '1') voltage, V")
    input_bits: int = _q(8, 1, 16)
    t_bit_s: float = _q(20e-9, 0.0, 1e-3, lo_open=True, doc="period of one input bit, s")
    t_edge_s: float = _q(1e-9, 0.0, 1e-3, lo_open=True, doc="rise and fall time of a pulse, s")
    v_set_min_v: float = _q(1.5, 0.0, 10.0, doc="smallest SET amplitude of write-and-verify, V")
    v_set_max_v: float = _q(3.0, 0.0, 10.0, doc="largest SET amplitude of write-and-verify, V")
    v_reset_min_v: float = _q(1.5, 0.0, 10.0, doc="smallest RESET amplitude, V")
    v_reset_max_v: float = _q(3.0, 0.0, 10.0, doc="largest RESET amplitude, V")
    v_set_pulse_v: float = _q(2.2, 0.0, 10.0,
                              doc="amplitude of a plain (non-adaptive) SET pulse, V")
    v_reset_pulse_v: float = _q(3.0, 0.0, 10.0,
                                doc="amplitude of a plain (non-adaptive) RESET pulse, V")
    t_write_s: float = _q(100e-9, 0.0, 1e-3, lo_open=True, doc="SET/RESET pulse width, s")
    v_gate_set_v: float = _q(2.0, 0.0, 5.0, doc="gate voltage during SET (compliance), V")
    v_gate_reset_v: float = _q(3.0, 0.0, 5.0, doc="gate voltage during RESET, V")

    def _check(self) -> None:
        for kind in ("set", "reset"):
            lo, hi = getattr(self, f"v_{kind}_min_v"), getattr(self, f"v_{kind}_max_v")
            if lo > hi:
                raise ConfigError(
                    f"drive.v_{kind}_min_v = {lo!r} must not exceed drive.v_{kind}_max_v = {hi!r}")
        for kind in ("set", "reset"):
            v = getattr(self, f"v_{kind}_pulse_v")
            lo, hi = getattr(self, f"v_{kind}_min_v"), getattr(self, f"v_{kind}_max_v")
            if not lo <= v <= hi:
                raise ConfigError(f"drive.v_{kind}_pulse_v = {v!r} must lie in "
                                  f"[drive.v_{kind}_min_v, drive.v_{kind}_max_v] = [{lo!r}, {hi!r}]")
        if 2 * self.t_edge_s >= self.t_bit_s:
            raise ConfigError(
                f"drive.t_edge_s = {self.t_edge_s!r} must be below half of "
                f"drive.t_bit_s = {self.t_bit_s!r}")


#: Most write pulses the procedure may give one device (floor phase plus every round's SET
#: and RESET phases): the surrogate's controller tables grow with it.
MAX_PULSES_PER_WRITE = 1 << 16


@dataclass(frozen=True)
class LevelsParams(_Validated):
    """The programmable levels: ``count`` read conductances evenly spaced over a window.

    The window is ``[g_min_us, g_max_us]``; left unset, an end is the nominal cell's read
    window end (1T1R read at ``drive.v_read_v`` with the device at ``n_min`` or ``n_max``,
    solved in ngspice). Write-and-verify targets these levels, the weight mapping of the
    analog layers uses them, and ``array``, ``validate`` and the calibration's
    ``write_verify``, ``array`` and ``energy`` surfaces draw their maps from them. Levels
    set beyond the device's window are refused where that window is known (when a table or
    an ngspice solve gives it).
    """

    section: ClassVar[str] = "levels"

    count: int = _q(128, 2, 4096, doc="number of programmable levels")
    g_min_us: float | None = _optional(0.0, 1e6, lo_open=True,
                                       doc="read conductance of the lowest level, uS "
                                           "(unset: the cell's read window bottom)")
    g_max_us: float | None = _optional(0.0, 1e6, lo_open=True,
                                       doc="read conductance of the highest level, uS "
                                           "(unset: the cell's read window top)")

    def _check(self) -> None:
        if self.g_min_us is not None and self.g_max_us is not None \
                and not self.g_min_us < self.g_max_us:
            raise ConfigError(f"levels.g_min_us = {self.g_min_us!r} must be below "
                              f"levels.g_max_us = {self.g_max_us!r}")

    def window(self, cell_window_s: tuple[float, float]) -> tuple[float, float]:
        """The levels' window (S) inside the cell's read window ``cell_window_s`` (S)."""
        lo_cell, hi_cell = (float(v) for v in cell_window_s)
        lo = lo_cell if self.g_min_us is None else self.g_min_us * 1e-6
        hi = hi_cell if self.g_max_us is None else self.g_max_us * 1e-6
        slack = 1e-9 * hi_cell
        if lo < lo_cell - slack or hi > hi_cell + slack or not lo < hi:
            raise ConfigError(
                f"levels window [{lo * 1e6:.6g}, {hi * 1e6:.6g}] uS must lie inside the "
                f"cell's read window [{lo_cell * 1e6:.6g}, {hi_cell * 1e6:.6g}] uS: set "
                "levels.g_min_us and levels.g_max_us within it, or leave them unset",
                field="levels.g_min_us" if lo < lo_cell - slack else "levels.g_max_us")
        return lo, hi

    def spacing(self, cell_window_s: tuple[float, float]) -> float:
        """Conductance between neighbouring levels, S."""
        lo, hi = self.window(cell_window_s)
        return (hi - lo) / (self.count - 1)

    def conductances(self, cell_window_s: tuple[float, float]) -> np.ndarray:
        """The ``count`` level conductances, S, lowest first."""
        lo, hi = self.window(cell_window_s)
        return np.linspace(lo, hi, self.count)

    def targets(self, how_many: int) -> tuple[int, ...]:
        """``how_many`` level indices spread evenly (each in the middle of its share of the
        levels), or every level when there are no more than that."""
        if self.count <= how_many:
            return tuple(range(self.count))
        stride = self.count // how_many
        return tuple(stride // 2 + stride * k for k in range(how_many))


@dataclass(frozen=True)
class WriteVerifyParams(_Validated):
    """The write-and-verify controller of the tile (the procedure is
    ``circuitsim/write_policy.py``'s): its tolerance, its floor and its limits."""

    section: ClassVar[str] = "write_verify"

    tolerance_levels: float = _q(0.5, 0.0, 10.0, lo_open=True,
                                 doc="accepted |read - target|, in level spacings")
    floor_levels: float = _q(1.0, 0.0, 1000.0,
                             doc="the reset-to-floor phase ends at or below this read, in level "
                                 "spacings above the lowest level")
    max_rounds: int = _q(2, 1, 100, doc="rounds of adaptive SET and RESET")
    set_step_v: float = _q(0.05, 0.0, 5.0, lo_open=True,
                           doc="amplitude step of the adaptive SET ramp, V")
    reset_step_v: float = _q(0.1, 0.0, 5.0, lo_open=True,
                             doc="amplitude step of the adaptive RESET ramp, V")
    max_pulses_per_phase: int = _q(60, 1, 10000, doc="pulses of one adaptive SET or RESET phase")
    max_floor_pulses: int = _q(20, 0, 10000, doc="RESET pulses of the reset-to-floor phase")

    def _check(self) -> None:
        if self.max_pulses > MAX_PULSES_PER_WRITE:
            raise ConfigError(
                f"write_verify.max_floor_pulses + 2 * max_pulses_per_phase * max_rounds = "
                f"{self.max_pulses} must not exceed {MAX_PULSES_PER_WRITE}",
                field="write_verify.max_pulses_per_phase")

    @property
    def max_pulses(self) -> int:
        """The most write pulses one device can receive."""
        return self.max_floor_pulses + 2 * self.max_pulses_per_phase * self.max_rounds


_BLOCKS: dict[str, type] = {
    "device": DeviceParams,
    "transistor": TransistorParams,
    "array": ArrayParams,
    "tia": TIAParams,
    "adc": ADCParams,
    "drive": DriveParams,
    "levels": LevelsParams,
    "write_verify": WriteVerifyParams,
}


@dataclass(frozen=True)
class HardwareConfig:
    """Everything that describes the circuit being modelled."""

    device: DeviceParams = field(default_factory=DeviceParams)
    transistor: TransistorParams = field(default_factory=TransistorParams)
    array: ArrayParams = field(default_factory=ArrayParams)
    tia: TIAParams = field(default_factory=TIAParams)
    adc: ADCParams = field(default_factory=ADCParams)
    drive: DriveParams = field(default_factory=DriveParams)
    levels: LevelsParams = field(default_factory=LevelsParams)
    write_verify: WriteVerifyParams = field(default_factory=WriteVerifyParams)

    def __post_init__(self) -> None:
        for name, cls in _BLOCKS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got "
                                  f"{type(getattr(self, name)).__name__}")
        if self.drive.v_set_max_v > self.device.v_valid_max_v or \
                self.drive.v_reset_max_v > self.device.v_valid_max_v:
            raise ConfigError(
                f"drive pulse amplitudes up to "
                f"{max(self.drive.v_set_max_v, self.drive.v_reset_max_v)!r} V "
                f"exceed the device model's validity, device.v_valid_max_v = "
                f"{self.device.v_valid_max_v!r} V")

    def replace(self, **blocks: Mapping[str, Any]) -> "HardwareConfig":
        """A copy with fields of named blocks changed: ``cfg.replace(array={"rows": 8})``."""
        new = {}
        for name, changes in blocks.items():
            if name not in _BLOCKS:
                raise ConfigError(f"unknown configuration block {name!r}: "
                                  f"choose from {list(_BLOCKS)}")
            new[name] = _build_block(name, {**_fields(getattr(self, name)),
                                            **dict(changes)})
        return dataclasses.replace(self, **new)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every block's fields; fields left unset (``None``) are left out, as in TOML."""
        return {name: _fields(getattr(self, name)) for name in _BLOCKS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: "HardwareConfig | None" = None
                  ) -> "HardwareConfig":
        """Build from nested mappings; blocks or fields left out keep ``base``'s values."""
        base = base or cls()
        unknown = set(data) - set(_BLOCKS) - {"solver", "surrogate", "energy"}
        if unknown:
            raise ConfigError(f"unknown configuration block(s) {sorted(unknown)}: "
                              f"choose from {list(_BLOCKS)}")
        blocks = {}
        for name in _BLOCKS:
            section = data.get(name, {})
            if not isinstance(section, Mapping):
                raise ConfigError(f"[{name}] must be a table of fields, got {section!r}")
            blocks[name] = _build_block(
                name, {**_fields(getattr(base, name)), **dict(section)})
        return cls(**blocks)


def _fields(block: Any) -> dict[str, Any]:
    """A block's fields as a dict, unset ones left out."""
    return {k: v for k, v in dataclasses.asdict(block).items() if v is not None}


def _construct(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    """``cls(**values)``, naming unknown fields of the ``[section]`` table first."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)} in [{section}]: "
                          f"known fields are {sorted(known)}")
    return cls(**values)


def _build_block(name: str, values: Mapping[str, Any]) -> Any:
    return _construct(_BLOCKS[name], name, values)


@dataclass(frozen=True)
class SolverConfig(_Validated):
    """How ngspice is driven; changes no physics."""

    section: ClassVar[str] = "solver"

    backend: str = _choice("shared", ("shared", "batch"),
                           doc="'shared': libngspice in a worker process; 'batch': ngspice -b")
    timeout_s: float = _q(600.0, 0.0, 86400.0, lo_open=True,
                          doc="a solve running longer is killed, s")
    recycle_after: int = _q(200, 1, 10**6, doc="solves before a worker's ngspice is restarted")
    retries: int = _q(2, 0, 5, doc="convergence aids tried after a failed solve")
    steps_per_bit: int = _q(4, 2, 10000,
                            doc="largest transient step, as a fraction of an input-bit period")
    steps_per_pulse: int = _q(8, 2, 10000,
                              doc="largest transient step of a pulse train, as a fraction of "
                                  "the shorter of a write pulse and a read")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SolverConfig":
        return _construct(cls, "solver", data)


@dataclass(frozen=True)
class SurrogateConfig(_Validated):
    """What the surrogate and the training's write policy use and no SPICE run does.

    None of it is in a calibration's content hash: changing it needs no recalibration.
    Read noise is one read's standard deviation of a cell's conductance, stated as a
    fraction of the levels' window (``"window"``), in level spacings (``"level"``, the
    paper's convention: 0.3 level of 16) or in uS (``"us"``); ngspice's transients are
    noise-free. Verify reads of write-and-verify in training are noise-free with
    ``verify_reads = 0`` (an ideal verify); with ``n >= 1`` each is the mean of ``n`` noisy
    reads (standard deviation ``read_noise / sqrt(n)``), which must not exceed the verify's
    tolerance (``write_verify.tolerance_levels`` level spacings): a noisier verify cannot
    resolve the levels and is refused where a chip is built. ``saturation_rereads`` is the
    range management of the chip's controller (as bound management in other simulators):
    a vector whose read reaches the converter's top code on any column is read again at
    half the input scale, losing one input bit, up to that many times.
    """

    section: ClassVar[str] = "surrogate"

    read_noise: float = _q(0.02, 0.0, 1e6,
                           doc="standard deviation of one read of a cell, in read_noise_unit")
    read_noise_unit: str = _choice("window", ("window", "level", "us"),
                                   doc="'window': fraction of the levels' window; 'level': "
                                       "level spacings; 'us': uS")
    verify_reads: int = _q(0, 0, 1000,
                           doc="noisy reads averaged per verify in training (0: noise-free)")
    write_threshold: float = _q(1.0 / 15.0, 0.0, 1.0, lo_open=True,
                                doc="mixed-precision write threshold, fraction of the weight "
                                    "range 2 w_max (the paper's 1/15; of 16 levels, whose "
                                    "steps divide 2 w_max in 30, two steps)")
    saturation_rereads: int = _q(3, 0, 8,
                                 doc="times an analog layer reads an input vector again, its "
                                     "inputs halved, while the read puts a column at the "
                                     "ADC's top code (0: such codes clip)")

    def read_noise_s(self, levels_window_s: tuple[float, float], level_count: int) -> float:
        """One read's standard deviation, S, for levels ``level_count`` over
        ``levels_window_s`` (S)."""
        span = float(levels_window_s[1]) - float(levels_window_s[0])
        if self.read_noise_unit == "window":
            return self.read_noise * span
        if self.read_noise_unit == "level":
            return self.read_noise * span / (level_count - 1)
        return self.read_noise * 1e-6



def _chip() -> HardwareConfig:
    return HardwareConfig(array=ArrayParams(rows=64, cols=64))


def _paper_sim() -> HardwareConfig:
    """The paper's simulated tile (its Table 1), sized as a designer would for 256 rows.

    - 256x64 cells, the chip's device, transistor and wires.
    - 16 levels over 5.5-38.5 uS (on/off 7, the paper's 1-7 uA ratio), inside the cell's
      read window of 4.47-41.6 uS (ngspice, 1T1R at 0.1 V); the paper's 10-70 uS is not.
    - TIA feedback 1 kohm: the largest plane current, 256 cells x 38.5 uS x 0.1 V =
      0.99 mA, gives 0.99 V, inside the linear range of the +-1.5 V rails (the chip's
      5 kohm would put a 256-row column on its rail).
    - ADC full scale 0.07 V, i.e. the paper's 0-70 uA column range through 1 kohm, and
      conversion noise 0.2745 mV rms (the paper's 2 sigma = 0.549 uA).
    - Read noise 0.3 level of 16 is ``SurrogateConfig``'s default of 0.02 of the window.
    """
    return HardwareConfig(array=ArrayParams(rows=256, cols=64),
                          tia=TIAParams(r_feedback_ohm=1000.0),
                          adc=ADCParams(v_full_scale_v=0.07, noise_v_rms=2.745e-4),
                          levels=LevelsParams(count=16, g_min_us=5.5, g_max_us=38.5))


def _tiny() -> HardwareConfig:
    return HardwareConfig(array=ArrayParams(rows=8, cols=8))


PRESETS = {"chip": _chip, "paper-sim": _paper_sim, "tiny": _tiny}


def preset(name: str) -> HardwareConfig:
    """The named preset: ``chip`` (64x64, the paper's chip), ``paper-sim`` (256x64), ``tiny``."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}",
                          field="preset") from None


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file; ConfigError (field ``config``) when it cannot be read."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} does not exist",
                          field="config") from None
    except IsADirectoryError:
        raise ConfigError(f"configuration file {str(path)!r} is a folder: name a TOML file "
                          "inside it", field="config") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"configuration file {str(path)!r} is not UTF-8 text (byte "
                          f"{err.start}: {err.reason}); TOML files are UTF-8",
                          field="config") from None
    except OSError as err:
        raise ConfigError(f"configuration file {str(path)!r} cannot be read: "
                          f"{err.strerror or err}", field="config") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {err}",
                          field="config") from err
    return data


def load_config(path: str | os.PathLike[str], *, base: HardwareConfig | None = None
                ) -> tuple[HardwareConfig, SolverConfig]:
    """Read a TOML file with ``[device]``, ``[array]``, ... and an optional ``[solver]`` table."""
    data = read_toml(Path(path))
    hardware = HardwareConfig.from_dict(data, base=base)
    solver = SolverConfig.from_dict(data.get("solver", {}))
    return hardware, solver


def load_surrogate_config(path: str | os.PathLike[str]) -> SurrogateConfig:
    """The ``[surrogate]`` table of a TOML file (defaults where it has none)."""
    return SurrogateConfig.from_dict(read_toml(Path(path)).get("surrogate", {}))


def save_config(path: str | os.PathLike[str], hardware: HardwareConfig,
                solver: SolverConfig | None = None,
                surrogate: SurrogateConfig | None = None) -> None:
    """Write the configuration as TOML, atomically."""
    data: dict[str, Any] = hardware.to_dict()
    if solver is not None:
        data["solver"] = dataclasses.asdict(solver)
    if surrogate is not None:
        data["surrogate"] = surrogate.to_dict()
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(tomli_w.dumps(data).encode()))
