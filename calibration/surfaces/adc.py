"""Surface ``adc``: the multi-cycle ADC front-end and conversion, as ngspice solves them.

The accumulated voltage of the front-end is ``D = sum_k w_k V_k + d_offset`` (ideal:
``w_k = 2^(k - input_bits)``, no offset), with ``V_k`` the sample of bit ``k`` (minus the TIA
output at its sample instant); the conversion is ``code = Q(D + noise)``. All three parts are
measured in SPICE on the ADC model's own blocks (``netlists.adc_model``: for the multi-cycle
ADC ``netlists.periphery.adc_frontend_subckt``, ``adc_quantizer_subckt``), with the offset and
INL of the config (one ADC's).

SPICE runs
----------
* ``weights`` (one ``.tran``, ``netlists.calibration_decks.render_adc_weights_deck``):
  front-ends clocked exactly as in the tile deck (``ReadTiming`` clocks, the tile deck's step
  ``t_bit_s / SolverConfig.steps_per_bit`` from the runner's solver, ``uic``), each driven by
  a PWL voltage standing in for the TIA output (``-V_k`` during bit ``k``, shaped as the row
  drive): one per bit with only that bit at ``probe_rel * v_full_scale_v`` (its ``D`` minus
  the offset, over the probe, is ``w_k``), one with no input (``d_offset``), and one fixed
  irregular staircase that checks superposition (``superposition_error_v``: its ``D`` minus
  ``sum_k w_k V_k + d_offset``). The front-end is linear in its input and all front-ends share
  the time points of one transient, so this is ~0 (rounding): a check of the deck and of the
  weights' use, not a measure of the integrator. The integrator's own error on a share
  (~40 uV for the default switches, ``netlists.array.ReadTiming``) is inside ``w_k``.
* ``transfer`` (one ``.dc``, ``render_adc_transfer_deck``): the quantizer over a fine grid of
  ``D`` covering both clip ends (``d_margin_lsb`` LSB beyond the offset-shifted ends of the
  range), ``d_points_per_lsb`` points per LSB, placed half a step off every ideal code edge.
  Gives ``code`` [d] and the transition levels ``transition_v`` [transition]: the ``D`` at
  which the code first reaches ``c``, located to +-half a step.
* ``noise`` (``noise_runs`` ``.tran`` runs, seeds ``noise_seed + r``,
  ``render_adc_noise_deck``): each of ``n_noise_d`` voltages converted ``noise_draws`` times
  per run with input-referred Gaussian noise of ``adc.noise_v_rms`` added to ``D``; gives
  ``code_mean`` and ``code_std`` [d_noise].

Noise: decision and why
-----------------------
The noise is solved in SPICE, seeded and reproducible. ngspice's ``TRNOISE`` cannot be seeded
from a deck without a ``.control`` block: ``.option seed=N`` reseeds ngspice's uniform
generators but not the Gaussian generator ``TRNOISE`` uses (two runs with the same seed
differ, checked on ngspice 46); ``TRRANDOM`` type 2 (Gaussian) is reproducible only in a
fresh ngspice (a reused shared-library worker gives other values on the second run). The
deck therefore draws two seeded uniforms per conversion (``TRRANDOM`` type 1) and forms the
Gaussian by Box-Muller in a ``B`` source; the same seed gives bit-identical codes on every run
and on both runner backends. The measured noise standard deviation is stored as the
attribute ``noise_v_rms_measured`` next to the configured ``noise_v_rms``. With
``noise_v_rms = 0`` the spread is zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from calibration.base import Array, SurfaceData, preset_grid, result_vector, steps_per_bit
from netlists.adc_model import adc_model
from netlists.array import read_timing
from netlists.calibration_decks import (
    check_count,
    linear_values,
    render_adc_noise_deck,
    render_adc_transfer_deck,
    render_adc_weights_deck,
)
from netlists.config import HardwareConfig, SolverConfig
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["ADCGrid", "ADCSurface", "SURFACE", "PROBE_STAIRCASE", "d_range"]

#: Samples (in full scales) of the superposition probe, bit 0 first; repeated cyclically
#: for more than 8 input bits. Irregular on purpose.
PROBE_STAIRCASE = (0.83, 0.12, 0.57, 0.94, 0.31, 0.68, 0.05, 0.46)
#: Time per noise draw in the noise transient, s (any value: the quantizer has no dynamics).
_T_DRAW_S = 1e-9


@dataclass(frozen=True)
class ADCGrid:
    """Sweep grid of ``adc``; validated at construction (ConfigError naming the field)."""

    d_points_per_lsb: int = 8
    d_margin_lsb: float = 4.0
    n_noise_d: int = 33
    noise_draws: int = 32
    noise_runs: int = 1
    noise_seed: int = 1
    probe_rel: float = 1.0

    def __post_init__(self) -> None:
        check_count("adc.d_points_per_lsb", self.d_points_per_lsb, lo=1, hi=1024)
        if isinstance(self.d_margin_lsb, bool) or not isinstance(self.d_margin_lsb,
                                                                  (int, float)) \
                or not math.isfinite(self.d_margin_lsb) or not 1.0 <= self.d_margin_lsb <= 1024:
            raise ConfigError(f"adc.d_margin_lsb = {self.d_margin_lsb!r} is out of range: "
                              "allowed [1, 1024] LSB (the sweep must reach past both clip "
                              "ends)")
        check_count("adc.n_noise_d", self.n_noise_d, hi=100_000)
        check_count("adc.noise_draws", self.noise_draws, hi=1_000_000)
        check_count("adc.noise_runs", self.noise_runs, lo=1, hi=1000)
        check_count("adc.noise_seed", self.noise_seed, lo=1, hi=2**31 - 1 - self.noise_runs)
        if isinstance(self.probe_rel, bool) or not isinstance(self.probe_rel, (int, float)) \
                or not math.isfinite(self.probe_rel) or not 0.0 < self.probe_rel <= 2.0:
            raise ConfigError(f"adc.probe_rel = {self.probe_rel!r} is out of range: allowed "
                              "(0, 2] full scales")


_PRESET_GRIDS = {
    "tiny": ADCGrid(d_points_per_lsb=4, n_noise_d=9, noise_draws=16, noise_runs=1),
    "chip": ADCGrid(d_points_per_lsb=16, n_noise_d=65, noise_draws=64, noise_runs=2),
    "paper-sim": ADCGrid(d_points_per_lsb=32, n_noise_d=129, noise_draws=128, noise_runs=4),
}


def d_range(hw: HardwareConfig, grid: ADCGrid) -> tuple[float, float, int]:
    """``(lo, hi, n)`` of the fine ``D`` grid of the transfer sweep.

    Covers the ADC model's ``transfer_span_v`` (for the multi-cycle ADC
    ``[min(0, -offset), max(FS, FS - offset)]``) plus ``d_margin_lsb`` LSB each side; every
    point is half a step away from the ideal (INL-free) code edges (``code_edge_v`` plus
    whole LSBs: ``(c - 1/2) LSB - offset``).
    """
    adc = adc_model(hw)
    lsb = adc.lsb_v
    span_lo, span_hi = adc.transfer_span_v()
    lo_need = span_lo - grid.d_margin_lsb * lsb
    hi_need = span_hi + grid.d_margin_lsb * lsb
    step = lsb / grid.d_points_per_lsb
    base = adc.code_edge_v()
    j_lo = math.floor((lo_need - base) / step)
    j_hi = math.ceil((hi_need - base) / step)
    lo = base + (j_lo + 0.5) * step
    n = j_hi - j_lo
    return lo, lo + (n - 1) * step, n


def _noise_d(hw: HardwareConfig, grid: ADCGrid) -> np.ndarray:
    lo, hi, _ = d_range(hw, grid)
    return linear_values(lo, hi, grid.n_noise_d)


def _probe_inputs(hw: HardwareConfig, grid: ADCGrid) -> np.ndarray:
    """(bits + 2, bits): one-hot probes, the zero input, the superposition staircase (V)."""
    bits = hw.drive.input_bits
    fs = hw.adc.v_full_scale_v
    stair = np.array([PROBE_STAIRCASE[k % len(PROBE_STAIRCASE)] for k in range(bits)]) * fs
    return np.vstack([grid.probe_rel * fs * np.eye(bits), np.zeros(bits), stair])


def _codes(values: np.ndarray, name: str, top: int) -> np.ndarray:
    codes = np.rint(values)
    if np.any(np.abs(values - codes) > 1e-6) or np.any(codes < 0) or np.any(codes > top):
        raise SimulatorError(f"ADC codes are not whole numbers in [0, {top}]", netlist=name)
    return codes.astype(np.int64)


def _draw_times(t: np.ndarray, draws: int, name: str) -> np.ndarray:
    """Index of one time point strictly inside each draw's interval ``(m T, (m+1) T]``."""
    mids = (np.arange(draws) + 0.5) * _T_DRAW_S
    idx = np.searchsorted(t, mids)
    idx = np.clip(idx, 0, t.size - 1)
    left = np.clip(idx - 1, 0, t.size - 1)
    idx = np.where(np.abs(t[left] - mids) < np.abs(t[idx] - mids), left, idx)
    margin = 1e-3 * _T_DRAW_S
    inside = (t[idx] > np.arange(draws) * _T_DRAW_S + margin) & \
        (t[idx] < (np.arange(draws) + 1) * _T_DRAW_S - margin)
    if not np.all(inside):
        raise SimulatorError("the noise transient has no time point inside every draw",
                             netlist=name)
    return idx


class ADCSurface:
    """The ``adc`` surface (see the module docstring)."""

    name = "adc"
    grid_type = ADCGrid

    def grid(self, preset: str) -> ADCGrid:
        return preset_grid(self.name, _PRESET_GRIDS, preset)

    def points(self, hw: HardwareConfig, grid: ADCGrid) -> list[dict[str, Any]]:
        read_timing(hw.drive)  # ConfigError now if the edges leave no sampling time
        jobs: list[dict[str, Any]] = [{"kind": "weights"}, {"kind": "transfer"}]
        jobs += [{"kind": "noise", "run": r, "seed": grid.noise_seed + r}
                 for r in range(grid.noise_runs)]
        return jobs

    def _deck(self, hw: HardwareConfig, grid: ADCGrid, point: Mapping[str, Any],
              steps_per_bit: int) -> tuple[str, str]:
        kind = point["kind"]
        if kind == "weights":
            return render_adc_weights_deck(hw, _probe_inputs(hw, grid), read_timing(hw.drive),
                                           steps_per_bit=steps_per_bit,
                                           name="adc_weights"), "adc_weights"
        if kind == "transfer":
            lo, hi, n = d_range(hw, grid)
            return render_adc_transfer_deck(hw, lo, hi, n, name="adc_transfer"), "adc_transfer"
        if kind == "noise":
            name = f"adc_noise{int(point['run'])}"
            return render_adc_noise_deck(hw, _noise_d(hw, grid), grid.noise_draws,
                                         int(point["seed"]), t_draw_s=_T_DRAW_S,
                                         name=name), name
        raise ConfigError(f"adc: unknown job kind {kind!r}")

    def solve(self, hw: HardwareConfig, grid: ADCGrid, point: Mapping[str, Any],
              runner: SpiceRunner) -> dict[str, np.ndarray]:
        deck, name = self._deck(hw, grid, point, steps_per_bit(runner))
        result = runner.run(deck, name=name)
        kind = point["kind"]
        top = adc_model(hw).top_code
        if kind == "weights":
            timing = read_timing(hw.drive)
            t = result_vector(result, "time", name)
            if abs(t[-1] - timing.t_stop_s) > 1e-6 * timing.t_stop_s:
                raise SimulatorError(f"the transient ended at {t[-1]!r} s instead of "
                                     f"{timing.t_stop_s!r} s", netlist=name)
            m = hw.drive.input_bits + 2
            acc = np.array([result_vector(result, f"v(acc{j})", name, t.size)[-1]
                            for j in range(m)])
            return {"acc_v": acc}
        if kind == "transfer":
            lo, hi, n = d_range(hw, grid)
            d = result_vector(result, "v(acc)", name, n)
            expected = linear_values(lo, hi, n)
            if np.max(np.abs(d - expected)) > 1e-9 * max(1.0, abs(lo), abs(hi)):
                raise SimulatorError("the swept accumulated voltage is not the grid",
                                     netlist=name)
            return {"code": _codes(result_vector(result, "v(code)", name, n), name, top)}
        # noise
        t = result_vector(result, "time", name)
        idx = _draw_times(t, grid.noise_draws, name)
        d = _noise_d(hw, grid)
        codes = np.stack([_codes(result_vector(result, f"v(code{k})", name, t.size)[idx], name, top)
                          for k in range(d.size)])
        noise = np.stack([result_vector(result, f"v(a{k})", name, t.size)[idx] - d[k]
                          for k in range(d.size)])
        return {"codes": codes, "noise_v": noise}

    def assemble(self, hw: HardwareConfig, grid: ADCGrid, points: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, np.ndarray]]) -> SurfaceData:
        kinds = [p["kind"] for p in points]
        if kinds.count("weights") != 1 or kinds.count("transfer") != 1 \
                or kinds.count("noise") != grid.noise_runs:
            raise ConfigError(f"adc: expected one 'weights', one 'transfer' and "
                              f"{grid.noise_runs} 'noise' jobs, got {kinds}")
        by_kind = {p["kind"]: r for p, r in zip(points, results) if p["kind"] != "noise"}
        noise_runs = sorted(((int(p["run"]), r) for p, r in zip(points, results)
                             if p["kind"] == "noise"), key=lambda pr: pr[0])
        bits = hw.drive.input_bits
        adc = adc_model(hw)
        top = adc.top_code
        fs = hw.adc.v_full_scale_v
        lsb = adc.lsb_v

        # (a) bit weights and offset
        acc = np.asarray(by_kind["weights"]["acc_v"], dtype=float)
        inputs = _probe_inputs(hw, grid)
        d_offset = float(acc[bits])
        weights = (acc[:bits] - d_offset) / (grid.probe_rel * fs)
        stair = inputs[bits + 1]
        superposition_error = float(acc[bits + 1] - (weights @ stair + d_offset))

        # (b) the conversion over D
        lo, hi, n = d_range(hw, grid)
        d = linear_values(lo, hi, n)
        code = np.asarray(by_kind["transfer"]["code"], dtype=np.int64)
        if code[0] != 0 or code[-1] != top:
            raise SimulatorError(f"the transfer sweep does not reach both clip ends: codes "
                                 f"{int(code[0])} .. {int(code[-1])}, expected 0 .. {top}",
                                 netlist="adc_transfer")
        levels = np.arange(1, top + 1)
        first = np.array([int(np.argmax(code >= c)) for c in levels])
        transition = 0.5 * (d[first - 1] + d[first])

        # (c) noise
        codes = np.concatenate([np.asarray(r["codes"], dtype=float) for _, r in noise_runs],
                               axis=1)
        noise = np.concatenate([np.asarray(r["noise_v"], dtype=float) for _, r in noise_runs],
                               axis=1)

        axes = {
            "bit": Array(np.arange(bits), "1", "input bit k (0 = LSB, sampled first)"),
            "d": Array(d, "V", "accumulated front-end voltage D at the conversion (fine grid "
                               "over both clip ends, half a step off the ideal code edges)"),
            "transition": Array(levels, "1", "code c reached at the transition c-1 -> c"),
            "d_noise": Array(_noise_d(hw, grid), "V",
                             "accumulated voltage D of the noise statistics"),
        }
        datasets = {
            "bit_weight": Array(weights, "1",
                                "effective weight of bit k's sample in D (ideal 2^(k - "
                                f"{bits})), measured with a {grid.probe_rel * fs!r} V probe"),
            "d_offset": Array(np.array(d_offset), "V",
                              "D with every sample at 0 V (front-end offset)"),
            "code": Array(code, "1", "noiseless ADC code of D (comparator offset and INL of "
                                     "the config)"),
            "transition_v": Array(transition, "V",
                                  "D at which the noiseless code first reaches c, to "
                                  f"+-{0.5 * lsb / grid.d_points_per_lsb!r} V (half a step "
                                  "of the d axis)"),
            "code_mean": Array(codes.mean(axis=1), "1",
                               f"mean code over {codes.shape[1]} noisy conversions of D"),
            "code_std": Array(codes.std(axis=1, ddof=1), "1",
                              f"sample standard deviation of the code over {codes.shape[1]} "
                              "noisy conversions of D"),
        }
        dims = {"bit_weight": ("bit",), "d_offset": (), "code": ("d",),
                "transition_v": ("transition",), "code_mean": ("d_noise",),
                "code_std": ("d_noise",)}
        attrs = {
            "bits": hw.adc.bits,
            "input_bits": bits,
            "v_full_scale_v": fs,
            "lsb_v": lsb,
            "comparator_offset_v": hw.adc.comparator_offset_v,
            "inl_lsb": hw.adc.inl_lsb,
            "noise_v_rms": hw.adc.noise_v_rms,
            "noise_v_rms_measured": float(noise.std()),
            "noise_model": "Gaussian, input-referred (added to D at the conversion), solved "
                           "in ngspice: seeded TRRANDOM uniforms + Box-Muller (TRNOISE "
                           "cannot be seeded); see calibration/surfaces/adc.py",
            "noise_seeds": [int(p["seed"]) for p in points if p["kind"] == "noise"],
            "superposition_error_v": superposition_error,
            "probe_v": grid.probe_rel * fs,
            "representation": "D = sum_k bit_weight[k] V_k + d_offset; code = number of "
                              "transition_v <= D (or look up code on d); conversion noise "
                              "of noise_v_rms on D",
            "spice_runs": len(points),
        }
        return SurfaceData(axes=axes, datasets=datasets, dims=dims, attrs=attrs)

    def netlists(self, hw: HardwareConfig, grid: ADCGrid) -> list[str]:
        """Every job's deck, rendered with the default ``steps_per_bit`` (the solver's step
        settings enter the content hash separately)."""
        steps = SolverConfig().steps_per_bit
        return [self._deck(hw, grid, p, steps)[0] for p in self.points(hw, grid)]


SURFACE = ADCSurface()
