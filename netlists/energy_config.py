"""Typed configuration of the module's energy and latency model, for what SPICE does not solve.

The tile deck gives the energy of the cells, wires, row drivers' resistance, word line and
TIA supplies (the ``energy`` calibration surface). What the deck holds only as an ideal
element, or not at all, is modelled per tile operation from the fields below: the row
drivers' supply and the 1-bit input DACs, the sample-and-hold buffers and capacitors, the
ADC conversions, the digital accumulation and its buffers, and the control. No ngspice run
reads these fields, so they are not in a calibration's content hash: changing them needs no
recalibration. They load from the ``[energy]`` table of a ``--config`` TOML file.

Each default names its source in the field's ``doc`` and in ``calibration/README.md``. The
digital figures are Horowitz's (ISSCC 2014, "Computing's energy problem", 45 nm, 0.9 V),
used unscaled for a 65 nm-class module (a conservative side: 65 nm costs more per
operation); the ADC's is a Walden figure of merit of the energy-efficient 8-bit SAR
converters in Murmann's ADC performance survey (1997-2023).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from netlists.config import _q, _Validated, read_toml

__all__ = ["EnergyModelConfig", "load_energy_config"]


@dataclass(frozen=True)
class EnergyModelConfig(_Validated):
    """Energy and timing of the periphery that the tile deck does not solve.

    Per tile operation (one bit-serial VMM of one tile, every column converted): the row
    drivers deliver the cells' current from ``v_row_supply_v`` (linear drivers: the SPICE
    row energy scaled by ``v_row_supply_v / v_read_v``); each input bit that is 1 charges
    its row line, ``cols * c_row_per_cell_f`` from the driver supply; each column's
    inverting sample-and-hold buffer draws ``i_sh_buffer_a`` from the TIA's supplies while
    the read lasts, and its sampling capacitor is charged once per bit from the buffer's
    upper supply; each column is converted once by an ADC shared by
    ``adc.columns_per_adc`` columns (``adc_fom_j_per_step * 2^bits`` per conversion,
    ``adc_conversion_time_s`` each, serialized within a group); each differential pair's
    two codes are subtracted, scaled by the tile's digital scale and added to the partial
    sum; the inputs are read from and the partial sums written to an SRAM buffer; the
    control draws ``control_power_w`` over the whole operation.
    """

    section: ClassVar[str] = "energy"

    v_row_supply_v: float = _q(1.2, 0.0, 10.0, lo_open=True,
                               doc="supply the row drivers draw the read current from, V "
                                   "(1.2 V: the 65 nm core supply; linear drivers)")
    c_row_per_cell_f: float = _q(1.5e-15, 0.0, 1e-9,
                                 doc="row-line capacitance per cell, F (1.5 fF: a cell pitch of "
                                     "metal, ~0.2 fF/um, plus the top electrode and the "
                                     "driver's share)")
    i_sh_buffer_a: float = _q(10e-6, 0.0, 1.0,
                              doc="bias of one column's sample-and-hold buffer, A (10 uA: "
                                  "100 MHz into 0.2 pF at gm/Id = 16 /V, Jespers and Murmann "
                                  "2017)")
    adc_fom_j_per_step: float = _q(10e-15, 0.0, 1e-9,
                                   doc="ADC Walden figure of merit, J per conversion step "
                                       "(10 fJ: 8-bit SARs at ~10 MS/s, Murmann's ADC survey)")
    adc_conversion_time_s: float = _q(100e-9, 0.0, 1.0,
                                      doc="one conversion, s (100 ns: 10 MS/s, the same "
                                          "survey's converters)")
    e_int_add_j: float = _q(0.03e-12, 0.0, 1e-9,
                            doc="8-bit integer add, J (subtracting a pair's codes; Horowitz "
                                "2014)")
    e_fp_mult_j: float = _q(3.7e-12, 0.0, 1e-9,
                            doc="FP32 multiply, J (the tile's digital scale; Horowitz 2014)")
    e_fp_add_j: float = _q(0.9e-12, 0.0, 1e-9,
                           doc="FP32 add, J (the partial sum over tile rows; Horowitz 2014)")
    e_sram_access_j: float = _q(10e-12, 0.0, 1e-6,
                                doc="one 64-bit access of an 8 kB SRAM buffer, J (Horowitz "
                                    "2014)")
    sram_word_bits: int = _q(64, 1, 4096, doc="bits per SRAM access")
    partial_sum_bits: int = _q(32, 1, 256, doc="bits of one stored partial sum (FP32)")
    control_power_w: float = _q(100e-6, 0.0, 1.0,
                                doc="sequencer and clock generation of one tile, W (100 uW: "
                                    "~500 flip-flops at 50 MHz at ~4 fJ per clocked "
                                    "flip-flop, 65 nm)")
    t_digital_s: float = _q(0.0, 0.0, 1.0,
                            doc="digital accumulation after the last conversion, s (0: "
                                "pipelined behind the next operation's read)")



def load_energy_config(path: str | os.PathLike[str] | None) -> EnergyModelConfig:
    """The ``[energy]`` table of a TOML file (defaults where it has none, or no file)."""
    if path is None:
        return EnergyModelConfig()
    return EnergyModelConfig.from_dict(read_toml(Path(path)).get("energy", {}))
