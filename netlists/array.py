"""SPICE decks of a whole 1T1R tile: array, bit-serial drive, TIAs and ADC front-ends.

Pure functions: configuration, cell states and inputs in, a complete ngspice deck out (title,
elements, ``.options klu``, one analysis card, ``.save``, ``.end``; no ``.control`` block).

The tile (``render_tile_deck``)
-------------------------------
* **Rows** are the inputs. Row ``i`` is driven by a PWL source ``Vrow<i>`` through
  ``r_driver_ohm``; the row line has ``r_wire_row_ohm`` per cell segment (driver -> cell 0,
  cell 0 -> cell 1, ...). Node of cell ``(i, j)`` on its row: ``r<i>_<j>``.
* **Columns** sum currents. Column ``j`` has ``r_wire_col_ohm`` per cell segment from cell
  ``(0, j)`` down to the TIA input ``tin<j>`` (the last segment joins cell ``rows-1`` to it).
  Node of cell ``(i, j)`` on its column: ``c<i>_<j>``. A zero resistance is a short: the two
  nodes are merged (ngspice dislikes 0-ohm resistors, and the matrix gets smaller).
* **Cells**: ``Xc<i>_<j> r<i>_<j> wl c<i>_<j> cell_1t1r n=<state>``, all gates on the word
  line ``wl`` held at ``v_gate_read_v`` by ``Vwl``.
* **Bit-serial drive**: input ``x_i`` (0 .. 2^input_bits - 1) as ``input_bits`` one-bit
  pulses, LSB first: bit ``k`` occupies ``[k T, (k+1) T]``, rising over ``t_edge`` from
  ``k T``, flat at ``v_read`` (bit set) or 0, falling over ``t_edge`` to 0 at ``(k+1) T``.
* **Readout**: one TIA per column (``Xtia<j>``, output ``tout<j>``), one front-end per column
  (``Xadc<j>``, accumulator ``acc<j>``) and one quantizer per column (``Xq<j>``, code
  ``code<j>``). At the final time point ``v(acc<j>)`` is the accumulated voltage
  ``D_j = sum_k 2^(k - input_bits) V_k`` and ``v(code<j>)`` the ADC code.

Sharing of TIA and ADC among columns
------------------------------------
The paper's chip shares one TIA + ADC among ``columns_per_adc`` (8) columns by
time-multiplexing: a column is read while the others are not connected. Here every column has
its own TIA and all are solved in one transient. That gives the same array operating point up
to the TIA's virtual-ground error (an unselected column in the chip sits at ground; here it
sits at ground within ``v(out)/A + vos``, i.e. well under a millivolt against a 0.1 V read)
and keeps the transient 8x shorter. Where sharing matters is the conversion: one physical ADC
with one offset and one INL serves a group of ``columns_per_adc`` adjacent columns, so the
quantizer instances of a group get the same ``voff`` and ``inl`` (``adc_offset_v`` and
``adc_inl_lsb`` are given per ADC, not per column).

Clock phases and the transient
------------------------------
The front-end's clocks (reset, track, share) are PWL ramps laid out by :class:`ReadTiming`:
the sample of bit ``k`` is taken at ``(k+1) T - 1.5 t_edge``, on the input's flat top, and the
transient stops at ``input_bits * T + t_edge``, after the last charge sharing. The maximum
step is ``t_bit_s / SolverConfig.steps_per_bit``.

The transient starts with ``uic`` (no DC operating point): at ``t = 0`` every input is 0, so
every cell sits at ``Vds = 0`` behind a high-gain virtual ground, and Newton iteration on that
degenerate point fails over and over (measured: ~2,200 iterations of gmin and source stepping
on a 16x16 tile, more than the whole transient). The point is known anyway: all nodes at 0
except the sources, which the first time step imposes; the accumulator is also reset by
``phir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from netlists.adc_model import adc_model
from netlists.config import DriveParams, HardwareConfig, SolverConfig
from netlists.device_model import device_model
from netlists.errors import ConfigError
from netlists.periphery import (
    CELL_SUBCKT,
    CLOCK_HIGH_V,
    cell_subckt,
    fmt,
    nmos_model_card,
    tia_instance,
    tia_subckt,
    tia_supply_sources,
)

__all__ = [
    "ReadTiming",
    "read_timing",
    "check_states",
    "check_inputs",
    "bit_planes",
    "render_tile_deck",
    "render_cell_read_deck",
    "adc_group_of_column",
    "n_adcs",
    "render_tile_op_deck",
]


@dataclass(frozen=True)
class ReadTiming:
    """When the bit-serial read happens; every time in seconds.

    Within bit ``k`` (``t0 = k T``, ``te = t_edge_s``):

    * the input rises over ``[t0, t0 + te]`` and falls over ``[t0 + T - te, t0 + T]``;
    * ``phi1`` (track) rises over ``[t0 + te, t0 + 2 te]`` and falls over
      ``[t0 + T - 2 te, t0 + T - te]``. Its switch conducts only above half the clock swing
      (``TRACK_THRESHOLD_V``), i.e. from ``t0 + 1.5 te`` to ``t0 + T - 1.5 te``: it opens on
      the input's flat top, and that is the sample instant;
    * ``phi2`` (share) rises over ``[t0 + T - te, t0 + T]`` and falls over
      ``[t0 + T, t0 + T + te]``; its switch conducts in proportion to the clock
      (``SHARE_THRESHOLD_V = 0``), so from ``t0 + T - te`` to ``t0 + T + te``: after ``phi1``
      opened, and ending where the next ``phi1`` starts to rise;
    * ``phir`` (reset) is high at 0 and falls over ``[0, te]``, before the first ``phi1``.

    No two switches ever conduct at once. Every clock corner coincides with an input corner
    except ``t0 + 2 te`` and ``t0 + T - 2 te``: five breakpoints per bit. That matters: at a
    breakpoint ngspice cuts its step to a tenth of the distance to the next one and grows it
    again, ~5 time points per corner. The share's conductance is a triangle ``2 te`` wide
    (``exp(-2 g_on te / c_sample_f)`` = ``exp(-20)`` of the step left unsettled by default)
    and its peak time constant, ``r_switch_on_ohm * c_sample_f / 2`` (50 ps), is not much
    below the ~0.1-0.4 ns steps taken there, so trapezoidal integration does not ring on it.
    Measured with nothing else moving (the worst case, a bit in which every input is 0):
    each share within 40 uV of ``(acc + V_k)/2`` for 1 kohm switches, within 70 uV for
    2 kohm (RC settling), but 1.2 mV for 250 ohm (ringing: keep switches this slow or
    slower). The transient ends after the last share, at ``input_bits * T + te``.
    """

    t_bit_s: float
    t_edge_s: float
    input_bits: int

    @property
    def t_stop_s(self) -> float:
        return self.input_bits * self.t_bit_s + self.t_edge_s

    def sample_times_s(self) -> np.ndarray:
        """Instants at which the tracking switch opens: ``V_k`` is the TIA output there."""
        k = np.arange(self.input_bits)
        return (k + 1) * self.t_bit_s - 1.5 * self.t_edge_s

    def phi1_pwl(self) -> str:
        T, te = self.t_bit_s, self.t_edge_s
        pts = [(0.0, 0.0)]
        for k in range(self.input_bits):
            t0 = k * T
            pts += [(t0 + te, 0.0), (t0 + 2 * te, CLOCK_HIGH_V),
                    (t0 + T - 2 * te, CLOCK_HIGH_V), (t0 + T - te, 0.0)]
        return _pwl(pts)

    def phi2_pwl(self) -> str:
        T, te = self.t_bit_s, self.t_edge_s
        pts = [(0.0, 0.0)]
        for k in range(self.input_bits):
            t0 = k * T
            pts += [(t0 + T - te, 0.0), (t0 + T, CLOCK_HIGH_V), (t0 + T + te, 0.0)]
        return _pwl(pts)

    def phir_pwl(self) -> str:
        return _pwl([(0.0, CLOCK_HIGH_V), (self.t_edge_s, 0.0)])


def read_timing(drive: DriveParams) -> ReadTiming:
    """The clock plan for ``drive``; raises :class:`ConfigError` if the edges leave no room."""
    if drive.t_bit_s <= 4 * drive.t_edge_s:
        raise ConfigError(
            f"drive.t_edge_s = {drive.t_edge_s!r} leaves no tracking time in a bit period of "
            f"drive.t_bit_s = {drive.t_bit_s!r}: the front-end needs t_edge_s < t_bit_s / 4")
    return ReadTiming(drive.t_bit_s, drive.t_edge_s, drive.input_bits)


def _pwl(points: Sequence[tuple[float, float]]) -> str:
    return "PWL(" + " ".join(f"{fmt(t)} {fmt(v)}" for t, v in points) + ")"


def check_states(hw: HardwareConfig, states: object) -> np.ndarray:
    """``states`` as a float array of shape (rows, cols) within [n_min, n_max], or ConfigError."""
    rows, cols = hw.array.rows, hw.array.cols
    try:
        arr = np.asarray(states, dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"states must be an array of numbers, got {type(states).__name__}"
                          ) from err
    if arr.shape != (rows, cols):
        raise ConfigError(f"states has shape {arr.shape}; the tile needs (rows, cols) = "
                          f"({rows}, {cols})")
    if not np.all(np.isfinite(arr)):
        bad = tuple(int(v) for v in np.argwhere(~np.isfinite(arr))[0])
        raise ConfigError(f"states{list(bad)} = {float(arr[bad])!r} is not finite")
    lo, hi = hw.device.n_min, hw.device.n_max
    outside = (arr < lo) | (arr > hi)
    if np.any(outside):
        bad = tuple(int(v) for v in np.argwhere(outside)[0])
        raise ConfigError(
            f"states{list(bad)} = {float(arr[bad])!r} is outside [device.n_min, device.n_max] = "
            f"[{lo!r}, {hi!r}] ({int(outside.sum())} value(s) outside)")
    return arr


def check_inputs(hw: HardwareConfig, x: object) -> np.ndarray:
    """``x`` as an int64 array of shape (rows,) within [0, 2^input_bits - 1], or ConfigError."""
    rows, bits = hw.array.rows, hw.drive.input_bits
    top = 2 ** bits - 1
    arr = np.asarray(x)
    if arr.shape != (rows,):
        raise ConfigError(f"x has shape {arr.shape}; the tile needs (rows,) = ({rows},)")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "b" or arr.dtype.kind not in "f":
            raise ConfigError(f"x must hold integers 0..{top}, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = int(np.argwhere(~np.isfinite(arr) | (arr != np.round(arr)))[0][0])
            raise ConfigError(f"x[{bad}] = {float(arr[bad])!r} is not a whole number")
    out = arr.astype(np.int64)
    outside = (out < 0) | (out > top)
    if np.any(outside):
        bad = int(np.argwhere(outside)[0][0])
        raise ConfigError(f"x[{bad}] = {int(out[bad])!r} is outside [0, {top}] "
                          f"(drive.input_bits = {bits})")
    return out


def bit_planes(x: np.ndarray, bits: int) -> np.ndarray:
    """(bits, rows) array of 0/1: row ``k`` is bit ``k`` (LSB first) of every input."""
    return (np.asarray(x, dtype=np.int64)[None, :] >> np.arange(bits)[:, None]) & 1


def _pwl_bits(bits_of_row: Sequence[int], drive: DriveParams) -> str:
    """PWL text of one row's bit-serial drive (one pulse per bit, return to zero)."""
    T, te, v = drive.t_bit_s, drive.t_edge_s, drive.v_read_v
    points = ["0 0"]
    for k, b in enumerate(bits_of_row):
        level = fmt(v) if b else "0"
        points.append(f"{fmt(k * T + te)} {level}")
        points.append(f"{fmt((k + 1) * T - te)} {level}")
        points.append(f"{fmt((k + 1) * T)} 0")
    return "PWL(" + " ".join(points) + ")"


def _chain(names: list[str], r_ohm: float, prefix: str) -> tuple[list[str], list[str]]:
    """Nodes ``names`` joined in series by ``r_ohm`` each; with 0 ohm the nodes are merged.

    Returns the node name actually used for each entry and the resistor lines.
    """
    if r_ohm == 0:
        return [names[0]] * len(names), []
    lines = [f"R{prefix}_{k} {names[k]} {names[k + 1]} {fmt(r_ohm)}"
             for k in range(len(names) - 1)]
    return list(names), lines


def n_adcs(hw: HardwareConfig) -> int:
    """How many physical ADCs the tile has (one per ``columns_per_adc`` columns)."""
    return -(-hw.array.cols // hw.adc.columns_per_adc)


def adc_group_of_column(hw: HardwareConfig) -> np.ndarray:
    """(cols,) index of the ADC that converts each column."""
    return np.arange(hw.array.cols) // hw.adc.columns_per_adc


def _per(name: str, value: object, n: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(n, default, dtype=float)
    arr = np.asarray(value, dtype=float)
    if arr.shape != (n,):
        raise ConfigError(f"{name} has shape {arr.shape}; expected ({n},)")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be finite")
    return arr


def _header(hw: HardwareConfig, name: str) -> list[str]:
    a = hw.array
    title = f"{name}: {a.rows}x{a.cols} 1T1R tile, bit-serial read"
    return [
        title,
        "* Rendered by netlists.array.render_tile_deck (see that module for the topology).",
        f"* rows driven through {fmt(a.r_driver_ohm)} ohm, row wire {fmt(a.r_wire_row_ohm)} "
        f"ohm/segment, column wire {fmt(a.r_wire_col_ohm)} ohm/segment, gates at "
        f"{fmt(a.v_gate_read_v)} V.",
        ".options klu",
    ]


def render_tile_deck(hw: HardwareConfig, states: object, x: object, *,
                     solver: SolverConfig | None = None, name: str = "tile",
                     tia_offset_v: object = None, adc_offset_v: object = None,
                     adc_inl_lsb: object = None) -> str:
    """The complete transient deck of one bit-serial tile read.

    ``states``: (rows, cols) frozen RRAM states ``n``; ``x``: (rows,) integer inputs.
    Optional per-instance variations (default: the config's single value everywhere):
    ``tia_offset_v`` (cols,), ``adc_offset_v`` and ``adc_inl_lsb`` (one per ADC, i.e.
    ``ceil(cols / columns_per_adc)``). The transient step is ``t_bit_s / steps_per_bit``.
    Saved vectors: ``time``, ``v(tout<j>)``, ``v(acc<j>)``, ``v(code<j>)``.
    """
    solver = solver if solver is not None else SolverConfig()
    n = check_states(hw, states)
    xs = check_inputs(hw, x)
    timing = read_timing(hw.drive)
    rows, cols = hw.array.rows, hw.array.cols
    vos = _per("tia_offset_v", tia_offset_v, cols, hw.tia.v_offset_v)
    group = adc_group_of_column(hw)
    voff = _per("adc_offset_v", adc_offset_v, n_adcs(hw), hw.adc.comparator_offset_v)
    inl = _per("adc_inl_lsb", adc_inl_lsb, n_adcs(hw), hw.adc.inl_lsb)
    adc = adc_model(hw)

    out = _header(hw, name)
    out += ["", device_model(hw).library(), nmos_model_card(hw.transistor),
            cell_subckt(hw.transistor, hw.device), tia_subckt(hw.tia),
            tia_supply_sources(hw.tia), adc.frontend_subckt(),
            adc.quantizer_subckt()]

    out.append("* Word line: all gates at the read gate voltage.")
    out.append(f"Vwl wl 0 DC {fmt(hw.array.v_gate_read_v)}")
    out.append("* Front-end clock phases (reset, track, share); see netlists/array.py.")
    out.append(f"Vphir phir 0 {timing.phir_pwl()}")
    out.append(f"Vphi1 phi1 0 {timing.phi1_pwl()}")
    out.append(f"Vphi2 phi2 0 {timing.phi2_pwl()}")

    out.append(f"* Row drivers: inputs x (LSB first), {hw.drive.input_bits} bits of "
               f"{fmt(hw.drive.t_bit_s)} s at {fmt(hw.drive.v_read_v)} V.")
    planes = bit_planes(xs, hw.drive.input_bits)
    sources = [f"* x[{i}] = {int(xs[i])}\nVrow{i} in{i} 0 {_pwl_bits(planes[:, i], hw.drive)}"
               for i in range(rows)]
    out += _array_lines(hw, n, sources)

    out.append("* Readout: TIA, front-end and quantizer per column; quantizers of one ADC "
               f"group ({hw.adc.columns_per_adc} columns) share offset and INL.")
    for j in range(cols):
        g = int(group[j])
        out.append(tia_instance(f"Xtia{j}", f"tin{j}", f"tout{j}", float(vos[j])))
        out.append(adc.frontend_instance(f"Xadc{j}", f"tout{j}", f"acc{j}"))
        out.append(adc.quantizer_instance(f"Xq{j}", f"acc{j}", f"code{j}",
                                          offset_v=float(voff[g]), inl_lsb=float(inl[g])))

    tstep = hw.drive.t_bit_s / solver.steps_per_bit
    out.append("* uic: start from all-zero node voltages, see the module docstring.")
    out.append(f".tran {fmt(tstep)} {fmt(timing.t_stop_s)} 0 {fmt(tstep)} uic")
    saves = [f"v(tout{j})" for j in range(cols)] + [f"v(acc{j})" for j in range(cols)] \
        + [f"v(code{j})" for j in range(cols)]
    out += _save_lines(saves)
    out.append(".end")
    return "\n".join(out) + "\n"


def _array_lines(hw: HardwareConfig, n: np.ndarray, row_sources: Sequence[str]) -> list[str]:
    """Row drivers (``row_sources[i]`` defines node ``in<i>``), wires and cells.

    Column ``j`` ends at node ``tin<j>``, which the caller holds (a TIA's input).
    """
    rows, cols = hw.array.rows, hw.array.cols
    out: list[str] = []
    row_nodes: list[list[str]] = []
    for i in range(rows):
        out.append(row_sources[i])
        drv, r_lines = _chain([f"in{i}", f"rin{i}"], hw.array.r_driver_ohm, f"drv{i}")
        out += r_lines
        nodes, w_lines = _chain([drv[-1]] + [f"r{i}_{j}" for j in range(cols)],
                                hw.array.r_wire_row_ohm, f"row{i}")
        out += w_lines
        row_nodes.append(nodes[1:])

    out.append("* Column lines, from cell (0, j) down to the TIA input tin<j>.")
    col_nodes: list[list[str]] = []
    for j in range(cols):
        names = [f"tin{j}"] + [f"c{i}_{j}" for i in reversed(range(rows))]
        nodes, w_lines = _chain(names, hw.array.r_wire_col_ohm, f"col{j}")
        out += w_lines
        col_nodes.append(list(reversed(nodes[1:])))

    out.append("* Cells: state n per cell.")
    for i in range(rows):
        for j in range(cols):
            out.append(f"Xc{i}_{j} {row_nodes[i][j]} wl {col_nodes[j][i]} {CELL_SUBCKT} "
                       f"n={fmt(float(n[i, j]))}")
    return out


def render_tile_op_deck(hw: HardwareConfig, states: object, row_v: object, *,
                        name: str = "tile_op") -> str:
    """Operating point of the tile with DC row voltages: one bit-plane of a read, settled.

    ``row_v``: (rows,) voltage of each row driver (``v_read_v`` for a 1 bit, 0 for a 0 bit,
    or anything in between). Array and TIAs as in :func:`render_tile_deck`; no front-end
    (an operating point has no sampling). Saved: ``v(tout<j>)`` (TIA outputs) and
    ``v(tin<j>)`` (virtual grounds).
    """
    n = check_states(hw, states)
    rows, cols = hw.array.rows, hw.array.cols
    v = np.asarray(row_v, dtype=float)
    if v.shape != (rows,):
        raise ConfigError(f"row_v has shape {v.shape}; the tile needs ({rows},)")
    vmax = hw.device.v_valid_max_v
    if not np.all(np.isfinite(v)) or np.any(np.abs(v) > vmax):
        raise ConfigError(f"row_v must be finite and within +-{vmax!r} V "
                          "(device.v_valid_max_v)")
    out = [f"{name}: {rows}x{cols} 1T1R tile, DC operating point",
           *_header(hw, name)[1:],
           "", device_model(hw).library(), nmos_model_card(hw.transistor),
           cell_subckt(hw.transistor, hw.device), tia_subckt(hw.tia),
           tia_supply_sources(hw.tia), f"Vwl wl 0 DC {fmt(hw.array.v_gate_read_v)}"]
    out += _array_lines(hw, n, [f"Vrow{i} in{i} 0 DC {fmt(float(v[i]))}" for i in range(rows)])
    for j in range(cols):
        out.append(tia_instance(f"Xtia{j}", f"tin{j}", f"tout{j}", hw.tia.v_offset_v))
    # Newton from all-zero node voltages drives the high-gain TIAs into their rails, where
    # the clamp's slope vanishes, and every stepping method fails until ngspice's
    # transient-op fallback (what that costs: benchmarks/bench_spice.py, "op without
    # .nodeset"). An initial guess of each output from the ideal column current converges
    # in a few iterations. It only seeds the iteration.
    guess = -hw.tia.r_feedback_ohm * (v @ device_model(hw).small_signal_conductance(n))
    guess = np.clip(guess, hw.tia.v_rail_low_v, hw.tia.v_rail_high_v)
    # Six digits: a seed needs no more, and the last bits of the dot product and the
    # device's exp() differ between CPUs; rounded, the deck text (and the calibration's
    # content hash) is the same on every machine.
    seeds = [f"{float(v_j):.6g}" for v_j in guess]
    for j0 in range(0, cols, 8):
        out.append(".nodeset " + " ".join(
            f"v(tout{j})={seeds[j]} v(xtia{j}.ng)={seeds[j]} v(tin{j})=0"
            for j in range(j0, min(j0 + 8, cols))))
    out.append(".op")
    out += _save_lines([f"v(tout{j})" for j in range(cols)] + [f"v(tin{j})" for j in range(cols)])
    out.append(".end")
    return "\n".join(out) + "\n"


def _save_lines(vectors: list[str], per_line: int = 16) -> list[str]:
    return [".save " + " ".join(vectors[k:k + per_line])
            for k in range(0, len(vectors), per_line)]


def render_cell_read_deck(hw: HardwareConfig, n_values: object, *,
                          name: str = "cell_read") -> str:
    """``.op`` deck of isolated 1T1R cells, each read at ``v_read_v`` with the read gate.

    Cell ``k`` (state ``n_values[k]``) sits between an ideal source ``Vm<k>`` at ``v_read_v``
    and ground; its read current is ``-i(vm<k>)``. No wires, drivers or TIAs: this is the
    conductance an ideal crossbar would use, ``g = I / v_read``.
    """
    n = np.asarray(n_values, dtype=float).ravel()
    if n.size == 0:
        raise ConfigError("n_values is empty")
    lo, hi = hw.device.n_min, hw.device.n_max
    if not np.all(np.isfinite(n)) or np.any((n < lo) | (n > hi)):
        raise ConfigError(f"n_values must lie in [device.n_min, device.n_max] = [{lo!r}, {hi!r}]")
    out = [f"{name}: {n.size} isolated 1T1R cells read at {fmt(hw.drive.v_read_v)} V",
           ".options klu", "", device_model(hw).library(), nmos_model_card(hw.transistor),
           cell_subckt(hw.transistor, hw.device),
           f"Vwl wl 0 DC {fmt(hw.array.v_gate_read_v)}"]
    for k, nk in enumerate(n):
        out.append(f"Vm{k} d{k} 0 DC {fmt(hw.drive.v_read_v)}")
        out.append(f"Xc{k} d{k} wl 0 {CELL_SUBCKT} n={fmt(float(nk))}")
    out.append(".op")
    out += _save_lines([f"i(vm{k})" for k in range(n.size)])
    out.append(".end")
    return "\n".join(out) + "\n"
