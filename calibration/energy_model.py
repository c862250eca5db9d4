"""Energy and latency of one tile operation: SPICE where SPICE gives it, models for the rest.

A tile operation is one bit-serial VMM of one whole tile: every row driven with its 8-bit
input (LSB first, one bit per ``drive.t_bit_s``), every column's TIA and multi-cycle
sampling front-end accumulating ``D = sum_k 2^(k-8) V_k``, then every column converted once
by an ADC shared by ``adc.columns_per_adc`` columns, the codes of each differential pair
subtracted, scaled and added to the layer's partial sums.

From the ``energy`` calibration surface (ngspice; the mean over its ``random`` VMM cases):

``crossbar``          cells and wires (the row drivers' energy less their resistance's loss)
``row_driver_loss``   the row drivers' output resistance
``wordline``          the word-line source over the read (displacement current, ~0)
``front_end_clocks``  the clock sources of the behavioural switches (~0)
``tia``               the TIAs' supplies: quiescent bias and output stage

Modelled (``netlists.energy_config.EnergyModelConfig``, each field with its source):

``row_driver_supply`` linear row drivers deliver the read current from ``v_row_supply_v``:
                      the SPICE row energy times ``v_row_supply_v / v_read_v - 1``
``input_dac``         each 1 bit charges its row line (``cols * c_row_per_cell_f``) to
                      ``v_read_v`` from the driver supply: ``C v_read v_row_supply`` per bit
``sample_hold``       each column's inverting buffer (bias ``i_sh_buffer_a`` across the TIA
                      supplies, over the read) and its sampling capacitor charged to the
                      mean sample voltage from the upper supply, once per bit
``adc``               one conversion per column, ``adc_fom_j_per_step * 2^bits``
``digital``           per differential pair: one integer subtraction, one FP32 multiply
                      (the tile's scale), one FP32 add (the partial sum)
``buffer``            the inputs read from and the pairs' partial sums written to SRAM
``control``           ``control_power_w`` over the whole operation

Latency of one operation: the read (``input_bits * t_bit_s + t_edge_s``, the transient's
length), then ``columns_per_adc`` conversions one after another (the groups convert in
parallel), then ``t_digital_s``. The TIAs and buffers are powered over the read only; the
sampling capacitors hold ``D`` while the conversions run.

Sharing: the deck gives every column its own TIA and front-end and solves them at once.
The chip's sharing of one ADC by 8 columns is in the latency (conversions serialized); the
energy of a conversion does not depend on when it happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from netlists.array import read_timing
from netlists.energy_config import EnergyModelConfig
from netlists.errors import TableError

if TYPE_CHECKING:  # pragma: no cover
    from calibration.store import Table

__all__ = ["BLOCKS", "SPICE_BLOCKS", "TileOperation", "tile_operation", "pulse_energy_j",
           "describe"]

#: The blocks of a tile operation's energy, in the order they are reported.
BLOCKS = ("crossbar", "row_driver_loss", "row_driver_supply", "input_dac", "wordline",
          "front_end_clocks", "tia", "sample_hold", "adc", "digital", "buffer", "control")
#: The blocks whose energy comes from ngspice (the rest are modelled).
SPICE_BLOCKS = ("crossbar", "row_driver_loss", "wordline", "front_end_clocks", "tia")
#: The crossbar proper: cells and wires.
CROSSBAR_BLOCKS = ("crossbar",)

_NEEDED = ("vmm_crossbar_energy_j", "vmm_driver_loss_energy_j", "vmm_row_driver_energy_j",
           "vmm_wordline_energy_j", "vmm_clock_energy_j", "vmm_tia_supply_energy_j",
           "vmm_tia_charge_c", "vmm_inputs", "vmm_duration_s", "vmm_tile_kind")


@dataclass(frozen=True)
class TileOperation:
    """One tile operation: energy by block (J), its latency (s) and what it computes."""

    rows: int
    cols: int
    energy_j: dict[str, float]
    latency_s: float
    read_s: float
    conversion_s: float
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def total_j(self) -> float:
        return float(sum(self.energy_j.values()))

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one operation, rows x cols (the paper's count: 2.66 nJ
        for a 64x64 VMM is 3.08 TOPS/W at two operations per MAC)."""
        return self.rows * self.cols

    @property
    def tops_per_w(self) -> float:
        return 2.0 * self.macs / self.total_j / 1e12

    @property
    def crossbar_fraction(self) -> float:
        return sum(self.energy_j[b] for b in CROSSBAR_BLOCKS) / self.total_j

    def breakdown_nj(self) -> dict[str, float]:
        return {b: self.energy_j[b] * 1e9 for b in BLOCKS}


def _table_error(message: str) -> TableError:
    """A TableError about the table the ``--table`` option (or the preset) named."""
    err = TableError(message)
    err.field = "table"
    return err


def _energy_surface(table: "Table"):
    if "energy" not in table.surfaces:
        raise _table_error(
            f"the table {str(table.path)!r} has no 'energy' surface (it holds "
            f"{sorted(table.surfaces)}): build it with `circuitsim calibrate` (add "
            "`--surfaces energy` for that surface alone) and pass the new table")
    surface = table.surface("energy")
    missing = [k for k in _NEEDED if k not in surface.datasets]
    if missing:
        raise _table_error(
            f"the table {str(table.path)!r} has an 'energy' surface without {missing} (it "
            "was built before the TIAs had supply pins): build a new one with `circuitsim "
            "calibrate`")
    return surface


def tile_operation(table: "Table", config: EnergyModelConfig | None = None) -> TileOperation:
    """Energy by block and latency of one tile operation of ``table``'s hardware."""
    cfg = config if config is not None else EnergyModelConfig()
    hw = table.hardware()
    surface = _energy_surface(table)
    ds = {k: np.asarray(surface.datasets[k].data) for k in _NEEDED}
    kinds = list(surface.attrs.get("tile_kind_names", ["random", "top", "floor"]))
    random = ds["vmm_tile_kind"] == kinds.index("random")
    if not np.any(random):
        raise _table_error(f"the table {str(table.path)!r} has no random VMM case in its "
                         "'energy' surface: calibrate with the preset's energy grid")

    def mean(key: str) -> float:
        return float(np.mean(ds[key][random]))

    rows, cols = hw.array.rows, hw.array.cols
    bits = hw.drive.input_bits
    timing = read_timing(hw.drive)
    t_read = timing.t_stop_s
    tia = hw.tia
    span = tia.supply_high_v - tia.supply_low_v
    v_read = hw.drive.v_read_v

    inputs = ds["vmm_inputs"][random].astype(np.int64)                 # (cases, rows)
    ones = np.mean([sum(bin(int(v)).count("1") for v in case) for case in inputs])
    # the mean |TIA output| while the read lasts: each sample's voltage
    v_sample = tia.r_feedback_ohm * mean("vmm_tia_charge_c") / (cols * mean("vmm_duration_s"))

    pairs = cols // 2
    accesses = math.ceil(rows * bits / cfg.sram_word_bits) + \
        math.ceil(pairs * cfg.partial_sum_bits / cfg.sram_word_bits)
    conversion = hw.adc.columns_per_adc * cfg.adc_conversion_time_s
    latency = t_read + conversion + cfg.t_digital_s

    energy = {
        "crossbar": mean("vmm_crossbar_energy_j"),
        "row_driver_loss": mean("vmm_driver_loss_energy_j"),
        "row_driver_supply": mean("vmm_row_driver_energy_j") * (cfg.v_row_supply_v / v_read
                                                                - 1.0),
        "input_dac": ones * cols * cfg.c_row_per_cell_f * v_read * cfg.v_row_supply_v,
        "wordline": mean("vmm_wordline_energy_j"),
        "front_end_clocks": mean("vmm_clock_energy_j"),
        "tia": mean("vmm_tia_supply_energy_j"),
        "sample_hold": cols * cfg.i_sh_buffer_a * span * t_read
                       + cols * bits * hw.adc.c_sample_f * v_sample * tia.supply_high_v,
        "adc": cols * cfg.adc_fom_j_per_step * 2.0 ** hw.adc.bits,
        "digital": pairs * (cfg.e_int_add_j + cfg.e_fp_mult_j + cfg.e_fp_add_j),
        "buffer": accesses * cfg.e_sram_access_j,
        "control": cfg.control_power_w * latency,
    }
    sources = {b: ("spice" if b in SPICE_BLOCKS else "model") for b in BLOCKS}
    return TileOperation(rows=rows, cols=cols, energy_j=energy, latency_s=latency,
                         read_s=t_read, conversion_s=conversion, sources=sources)


def pulse_energy_j(table: "Table") -> float:
    """The mean energy of one write pulse (SET and RESET, every amplitude and initial state
    of the ``energy`` surface), J: what a pulse count of write-and-verify costs."""
    if "energy" not in table.surfaces:
        raise _table_error(
            f"the table {str(table.path)!r} has no 'energy' surface: build it with "
            "`circuitsim calibrate`")
    return float(np.mean(table.surface("energy").datasets["pulse_energy_j"].data))


def describe(op: TileOperation) -> dict[str, Any]:
    """The operation as JSON-ready numbers; ``vmm_energy_nj`` is the sum of ``breakdown``."""
    breakdown = op.breakdown_nj()
    return {"rows": op.rows, "cols": op.cols, "vmm_energy_nj": sum(breakdown.values()),
            "tops_per_w": op.tops_per_w, "crossbar_fraction": op.crossbar_fraction,
            "vmm_latency_us": op.latency_s * 1e6, "read_us": op.read_s * 1e6,
            "conversion_us": op.conversion_s * 1e6, "breakdown": breakdown,
            "breakdown_source": dict(op.sources)}
