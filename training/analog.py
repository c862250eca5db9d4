"""Analog layers: weights held as conductance pairs on simulated 1T1R tiles.

A simulated :class:`AnalogChip` is one calibration table made executable: the surrogate read
path (``surrogate.tile.TileSurrogate``: bit-serial inputs, IR drop, TIA, multi-cycle
ADC front-end, ADC; read and ADC noise), the write path
(``surrogate.program_model.ProgrammingModel``: write-and-verify on the calibrated pulse
response), two seeded random streams (one for the devices and their programming, one for
read noise, counter-based: ``surrogate.normal_stream``), and a
device-to-device draw per device placed on it.

Mapping a weight matrix ``w`` (out x in) onto tiles of ``R`` rows x ``C`` columns
------------------------------------------------------------------------------------
Input ``i`` drives row ``i mod R`` of tile row ``i div R``; output ``o`` is the differential
column pair ``(2p, 2p+1)``, ``p = o mod C/2``, of tile column ``o div (C/2)``:
``w = w_max (g+ - g-) / (g_hi - g_lo)`` with the idle device of a pair at the floor ``g_lo``
(the lowest programmable level) and ``|w|`` spread over the ``L`` programmable levels
``[g_lo, g_hi]`` of the table's hardware (``hw.levels``; 128 on ``chip``): weights take the
values ``w_max k / (L - 1)``, ``k = -(L - 1)..L - 1``. Unused rows and
columns of the last tiles hold devices at the floor and get no input. ``w_max`` is fixed
per layer when it is mapped (the largest ``|w|`` of the digital weights, times
``range_margin``).

Forward (analog). Inputs are scaled per input vector to 8 bits (``q = round(255 |x| / s)``,
halves up, ``s = max |x|``, a digital scale); negative inputs take a second read with the
negated part. Every tile reads its slice of ``q`` through the surrogate into ADC codes:
one batched call per layer (``TileSurrogate.pair_sums_columns``) with the vectors along
the last axis, the layout in which convolution patches come, and the tile columns that
share inputs stacked. Each pair's two codes are subtracted, multiplied by the tile's
trainable digital scale (initially 1) and added over the tile rows (the partial sums are
digital; in the same pass as the conversion and its noise, ``surrogate.fused``), then
turned back into weight units with the nominal conversion (``lsb / (G v_read)``, the window
and ``w_max``). A vector that is zero everywhere has a digital scale of zero and a zero
result; it is not read. Tiles whose TIAs can reach a rail take the surrogate's exact
per-plane read instead.

Range management. A read that puts any column of any of the layer's tiles at the ADC's top
code is clipped. As a chip's controller would, the layer reads such a vector again with its
inputs halved (``q = round(top |x| / (2 peak))``: one input bit less) and doubles the
result, up to ``SurrogateConfig.saturation_rereads`` times (3 by default; 0 lets the codes
clip). Only the saturated vectors are read again; the others keep their one read and their
noise draws. ``AnalogChip.reads`` counts the vectors read, saturated, read again and left
clipped.

Backward (digital). Straight through: the gradient is that of the digital layer (``x @ w^T``,
or the convolution) with the effective weights ``w = w_hp * s``: ``w_hp`` the
high-precision weights (the layer's ``weight`` parameter), ``s`` the scale of the tile each
weight sits on. An autograd function returns the analog result and computes those
gradients with torch's own kernels (``conv2d_input``, ``conv2d_weight``), so the backward
costs what a digital layer's does and the digital forward is never run.

After every programming the tiles it wrote are prepared again for reading (the effective
conductances ``W(g)`` and what follows from them), for all layers of a chip in one batched
call; the other tiles keep theirs.

The devices themselves are only changed by :meth:`AnalogTiles.program`: write-and-verify of
the selected devices towards the conductances of new targets, counting the writes and the
pulses per device (``write_count``, ``pulse_count``); see ``training.optim`` for when it is
called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calibration.store import Table, open_table
from netlists.config import HardwareConfig, SurrogateConfig
from netlists.errors import CircuitSimError, ConfigError
from surrogate.normal_stream import NormalStream
from surrogate.program_model import Devices, ProgrammingModel
from surrogate.retention import Retention
from surrogate.statistical import StatisticalProgramming
from surrogate.tile import PreparedTiles, TileSurrogate

__all__ = ["AnalogChip", "AnalogTiles", "AnalogLinear", "AnalogConv2d", "from_digital",
           "to_tiles", "pair_levels",
           "analog_layers", "WriteStats", "ProgramPlan", "program_plans",
           "StatisticalProgramming", "PROGRAMMING", "NonFiniteValues"]


PROGRAMMING = ("exact", "statistical")


class NonFiniteValues(CircuitSimError):
    """NaN or inf where the chip needs numbers: in a layer's input (there is no 8-bit read
    pulse for it) or in a weight update (there is no level to write). Raised before the
    read or the write, so no device is touched; a run that diverged ends up here."""

#: ADC conversions read per chunk of input vectors (``AnalogChip.chunk_reads``).
CHUNK_READS = 1 << 22

#: Above this fraction of non-zero input vectors a layer reads them all rather than picking
#: out the non-zero ones (the picking and putting back cost more than reading the rest).
_DENSE = 0.8


def _check_verify_resolves(programmer: ProgrammingModel, config: SurrogateConfig) -> None:
    """ConfigError when a noisy verify read cannot tell the levels apart: its noise (one
    read's, over the square root of the reads averaged) above the accepted half-band."""
    noise, band = programmer.verify_noise_s, programmer.tolerance_s
    if noise <= band:
        return
    needed = math.ceil((programmer.read_noise_s / band) ** 2)
    hw = programmer.hw
    raise ConfigError(
        f"levels.count = {hw.levels.count} puts the levels {programmer.level_spacing_s * 1e6:.3g}"
        f" uS apart and write-and-verify accepts +-{band * 1e6:.3g} uS "
        f"(write_verify.tolerance_levels = {hw.write_verify.tolerance_levels:g}), but a "
        f"verify read's noise is {noise * 1e6:.3g} uS rms (surrogate.read_noise over the "
        f"square root of surrogate.verify_reads = {config.verify_reads}): the verify cannot "
        f"resolve these levels. Set surrogate.verify_reads >= {needed}, lower "
        "surrogate.read_noise, use fewer levels or a wider tolerance",
        field="surrogate.verify_reads")


class AnalogChip:
    """A simulated chip built from one calibration table (see the module docstring).

    ``seed`` seeds the chip's random streams: ``generator`` for the device-to-device draws
    of the devices that layers place on it and the cycle-to-cycle draws of every programming
    pulse, ``noise`` (a :class:`~surrogate.normal_stream.NormalStream`) for read and ADC
    noise.
    ``method``: how the surrogate computes a tile's effective conductances after each
    programming (``"fast"``: the matrix iteration, within 0.05 LSB of ``"exact"`` on 64x64).
    ``read_noise``: draw read and ADC noise in forward reads. ``programming``: ``"exact"``
    runs the write-and-verify procedure on the calibrated pulse response for every write;
    ``"statistical"`` draws each write's outcome from ngspice's own write-and-verify runs
    (:class:`StatisticalProgramming`; for models with millions of devices). ``rows`` and
    ``cols`` override the calibrated tile size (``TileSurrogate``). ``config``: read and
    verify noise (``SurrogateConfig``; default its defaults).
    """

    def __init__(self, table: Table | str | Path, *, seed: int = 0,
                 device: torch.device | str | None = None, method: str = "fast",
                 read_noise: bool = True, programming: str = "exact",
                 rows: int | None = None, cols: int | None = None,
                 config: SurrogateConfig | None = None) -> None:
        if not isinstance(table, Table):
            table = open_table(table)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed = {seed!r} must be a whole number >= 0")
        if programming not in PROGRAMMING:
            raise ConfigError(f"programming = {programming!r} is not allowed: choose one of "
                              f"{list(PROGRAMMING)}")
        self.table = table
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seed = seed
        self.read_noise = read_noise
        self.programming = programming
        self.config = SurrogateConfig() if config is None else config
        self.reader = TileSurrogate(table, device=self.device, method=method, rows=rows,
                                    cols=cols, config=self.config)
        self.programmer = ProgrammingModel.from_table(table, config=self.config,
                                                      device=self.device)
        #: verify reads carry noise (the mean of ``config.verify_reads`` noisy reads)
        self.verify_noise = read_noise and self.config.verify_reads > 0
        if self.verify_noise:
            _check_verify_resolves(self.programmer, self.config)
        self.statistical = StatisticalProgramming(table, self.programmer) \
            if programming == "statistical" else None
        self.generator = torch.Generator(self.device).manual_seed(seed)
        # the read noise: its own counter-based stream (see surrogate.normal_stream)
        noise_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        self.noise = NormalStream(noise_seed, device=self.device)
        #: ADC conversions a layer reads per chunk of input vectors (the chunk's voltages,
        #: 4 bytes each, stay cache-sized)
        self.chunk_reads = CHUNK_READS
        #: input vectors the analog layers read (a signed vector's two parts count twice),
        #: those whose read reached the ADC's top code, the re-reads at halved inputs
        #: (``SurrogateConfig.saturation_rereads``) and those left clipped after the last
        self.reads = {"vectors": 0, "saturated": 0, "reread": 0, "clipped": 0}
        self.hw: HardwareConfig = self.reader.hw
        self._retention: Retention | None = None
        self.g_lo, self.g_hi = (float(v) for v in self.programmer.level_window_s)
        self.levels = int(self.programmer.levels)
        hw = self.hw
        self.rows, self.cols = hw.array.rows, hw.array.cols
        if self.cols % 2:
            raise ConfigError(f"a tile needs an even number of columns for differential "
                              f"pairs, got {self.cols}")
        # ADC codes -> weight-domain units: D ~ G v_read (255/256) (q/255) @ (w dg / w_max).
        levels_in = 2 ** hw.drive.input_bits
        self.code_to_dot = (self.reader.lsb_v * levels_in
                            / ((levels_in - 1) * self.reader.tia_gain_ohm * hw.drive.v_read_v
                               * (self.g_hi - self.g_lo)))

    @property
    def retention(self) -> Retention:
        """What the devices do after programming (the table's ``retention`` surface; a
        TableError naming the command that builds it when the table has none)."""
        if self._retention is None:
            self._retention = Retention(self.table)
        return self._retention

    @property
    def pairs(self) -> int:
        """Weights (differential pairs) per tile column."""
        return self.cols // 2

    def describe(self) -> dict[str, Any]:
        return {"table": str(self.table.path), "content_hash": self.table.attrs.get(
            "content_hash"), "rows": self.rows, "cols": self.cols, "seed": self.seed,
            "levels": self.levels, "surrogate": self.config.to_dict()}


@dataclass(frozen=True)
class WriteStats:
    """What one :meth:`AnalogTiles.program` call did."""

    devices: int
    pulses: int
    failures: int


def to_tiles(m: torch.Tensor, shape: tuple[int, ...], fill: float = 0.0) -> torch.Tensor:
    """A layer's (out, in) matrix in the tile layout ``shape`` (tile rows, tile cols, R, C)
    of its weights: (tile rows, tile cols, R, C / 2), transposed, padded with ``fill``,
    blocked (the module docstring's mapping)."""
    tr, tc, rows, cols = shape
    pairs = cols // 2
    padded = m.new_full((tc * pairs, tr * rows), fill)
    padded[:m.shape[0], :m.shape[1]] = m
    return padded.reshape(tc, pairs, tr, rows).permute(2, 0, 3, 1)


def pair_levels(k: torch.Tensor) -> torch.Tensor:
    """Signed weight levels ``k`` (..., pairs) int16 as the two devices' levels (..., 2
    pairs): ``max(k, 0)`` on the first of a pair, ``max(-k, 0)`` on the second."""
    out = k.new_empty((*k.shape[:-1], 2 * k.shape[-1]))
    out[..., 0::2] = torch.clamp(k, min=0)
    out[..., 1::2] = torch.clamp(-k, min=0)
    return out


class AnalogTiles(nn.Module):
    """A weight matrix (out x in) mapped onto a grid of tiles of one chip (module docstring).

    Parameters: ``weight`` (out, in), the high-precision digital copy (what the optimizer
    updates and what the straight-through gradient uses); ``tile_scale`` (tile rows, tile
    cols). Buffers (saved in checkpoints): the device states, their device-to-device draws,
    the programmed targets, ``w_max``, per-device ``write_count`` and ``pulse_count``.
    """

    def __init__(self, weight: torch.Tensor, chip: AnalogChip, *, range_margin: float = 1.0,
                 w_max: float | None = None) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ConfigError(f"AnalogTiles maps a 2-D weight, got shape {tuple(weight.shape)}")
        self.chip = chip
        out_f, in_f = weight.shape
        self.out_features, self.in_features = int(out_f), int(in_f)
        self.grid = (math.ceil(in_f / chip.rows), math.ceil(out_f / chip.pairs))
        shape = (*self.grid, chip.rows, chip.cols)
        dev = chip.device
        w = weight.detach().to(dev, torch.float32)
        if w_max is None:
            w_max = float(w.abs().max()) * range_margin
        if not math.isfinite(w_max) or w_max <= 0:
            w_max = 1.0
        self.register_buffer("w_max", torch.tensor(float(w_max), device=dev))
        self.weight = nn.Parameter(w.clone())
        self.tile_scale = nn.Parameter(torch.ones(self.grid, device=dev))
        devices = chip.programmer.draw_devices(shape, generator=chip.generator)
        self.register_buffer("kd", devices.kd)
        self.register_buffer("wd", devices.wd)
        self.register_buffer("state", chip.programmer.floor_state(devices))
        self.register_buffer("target_level", torch.zeros(shape, dtype=torch.int16, device=dev))
        self.register_buffer("write_count", torch.zeros(shape, dtype=torch.int32, device=dev))
        self.register_buffer("pulse_count", torch.zeros(shape, dtype=torch.int64, device=dev))
        self._prepared: PreparedTiles | None = None
        self._operands: tuple[Any, ...] | None = None
        # A layer that fits in one tile row (column) reads only the rows (columns) it uses:
        # rows without input carry no current and columns are independent once W is known,
        # so slicing the read is exact.
        self._rows_used = self.in_features if self.grid[0] == 1 else chip.rows
        self._pairs_used = self.out_features if self.grid[1] == 1 else chip.pairs
        #: pulses of the last programming of every weight (mapping, fresh chip); uncounted
        self.mapping_pulses = self.program(w, count=False).pulses

    # -- mapping -------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return self.chip.levels

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """The nearest weights the tiles can hold: ``w_max k / (levels - 1)``, clipped."""
        top = self.levels - 1
        step = self.w_max / top
        return torch.clamp(torch.round(w / step), -top, top) * step

    def _to_tiles(self, m: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(out, in) -> (tile rows, tile cols, R, pairs): transposed, padded, blocked."""
        return to_tiles(m, (*self.grid, self.chip.rows, self.chip.cols), fill)

    def _from_tiles(self, t: torch.Tensor) -> torch.Tensor:
        """(tile rows, tile cols, R, pairs) -> (out, in)."""
        tr, tc = self.grid
        r, p = self.chip.rows, self.chip.pairs
        full = t.permute(1, 3, 0, 2).reshape(tc * p, tr * r)
        return full[:self.out_features, :self.in_features]

    def target_levels(self, w: torch.Tensor) -> torch.Tensor:
        """Per device (tile layout), the level index its conductance should take for ``w``."""
        top = self.levels - 1
        k = torch.clamp(torch.round(w / (self.w_max / top)), -top, top).to(torch.int16)
        return pair_levels(self._to_tiles(k.to(torch.float32)).to(torch.int16))

    def weight_device_writes(self) -> torch.Tensor:
        """Write counts of the two devices of every weight, (out, in, 2) (padding devices of
        partly used tiles left out)."""
        wc = self.write_count
        return torch.stack([self._from_tiles(wc[..., 0::2]), self._from_tiles(wc[..., 1::2])],
                           dim=-1)

    def devices(self) -> Devices:
        return Devices(kd=self.kd, wd=self.wd)

    def conductances(self) -> torch.Tensor:
        """The devices' actual read conductances (noise-free), S, tile layout."""
        return self.chip.programmer.read(self.state, self.devices())

    # -- programming ---------------------------------------------------------------------
    def plan(self, w: torch.Tensor, *, pairs: torch.Tensor | None = None,
             only_changed: bool = True) -> "ProgramPlan":
        """What :meth:`program` would write for ``w`` (see there); sets ``weight`` at the
        selected weights to their quantized values. Run plans with :func:`program_plans`."""
        with torch.no_grad():
            q = self.quantize(w.to(self.weight.device, torch.float32))
            new_levels = self.target_levels(q)
            sel_w = torch.ones_like(q, dtype=torch.bool) if pairs is None \
                else pairs.to(q.device, torch.bool)
            sel = self._to_tiles(sel_w.to(torch.float32)).bool().repeat_interleave(2, dim=-1)
            if only_changed:
                sel = sel & (new_levels != self.target_level)
            self.weight.data = torch.where(sel_w, q, self.weight.data)
            where = sel.reshape(-1).nonzero().squeeze(1)
            return ProgramPlan(self, sel, where, new_levels.reshape(-1).index_select(0, where))

    def plan_selected(self, select: torch.Tensor, levels: torch.Tensor) -> "ProgramPlan":
        """The plan that writes the devices of ``select`` (bool, tile layout) to ``levels``
        (int16, tile layout; read under the mask), in the order of the flattened layout."""
        where = select.reshape(-1).nonzero().squeeze(1)
        return ProgramPlan(self, select, where, levels.reshape(-1).index_select(0, where))

    def program(self, w: torch.Tensor, *, pairs: torch.Tensor | None = None,
                count: bool = True, only_changed: bool = True) -> WriteStats:
        """Write-and-verify the devices of the weights selected by ``pairs`` (out, in) bool
        (default: all) towards the quantized ``w``; set ``weight`` there to the quantized
        value. With ``only_changed`` a device whose target level is unchanged is left alone
        (the idle device of a pair stays on its floor). Writes are counted with ``count``.
        """
        plan = self.plan(w, pairs=pairs, only_changed=only_changed)
        return program_plans([plan], count=count)[0]

    def reprogram_fresh(self, seed_chip: AnalogChip) -> WriteStats:
        """Place this layer's weights on another chip: new device draws, all devices written
        from their floor to the current targets (not counted as training writes); returns
        what that programming did."""
        with torch.no_grad():
            self.chip = seed_chip
            shape = self.state.shape
            devices = seed_chip.programmer.draw_devices(shape, generator=seed_chip.generator)
            self.kd.copy_(devices.kd)
            self.wd.copy_(devices.wd)
            self.state.copy_(seed_chip.programmer.floor_state(devices))
            self.target_level.zero_()
            self._forget_tiles()
            stats = self.program(self.weight.detach().clone(), count=False)
            self.mapping_pulses = stats.pulses
            return stats

    def age(self, seconds: float, temperature_k: float) -> None:
        """Leave the devices alone for ``seconds`` at ``temperature_k``: each state drifts
        as the chip's ``retention`` surface says, and the tiles are prepared anew."""
        with torch.no_grad():
            self.state.copy_(self.chip.retention.after(self.state, self.kd, seconds,
                                                       temperature_k))
            self._forget_tiles()

    # -- reading -------------------------------------------------------------------------
    def _tiles(self) -> PreparedTiles:
        """All tiles, prepared for reading; computed when first needed, then kept up to date
        tile by tile by :func:`program_plans`."""
        if self._prepared is None:
            self._prepared = self.chip.reader.prepare(self.conductances())
            self._operands = None
        return self._prepared

    def _update_tiles(self, which: torch.Tensor, part: PreparedTiles) -> None:
        """Put the re-prepared tiles ``part`` (k, R, C) at the (tr, tc) places ``which``."""
        if self._prepared is None:
            return
        reader = self.chip.reader
        # the layer reads on as many settling components as its heaviest tile needs: the
        # new tiles may need more than the layer had (all tiles then read on more), or fewer
        rank = max(self._prepared.rank, reader.settling_rank(part))
        self._prepared = reader.with_rank(self._prepared, rank)
        self._prepared.put(which, reader.with_rank(part, rank))
        self._operands = None

    def _forget_tiles(self) -> None:
        self._prepared = None
        self._operands = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._forget_tiles()                     # new device states: prepare them afresh

    def _read_operands(self) -> tuple[Any, ...]:
        """What a read needs, sliced to the rows and columns the layer uses: on the
        shortcut, the fused conversion's operands (``TileSurrogate.pair_operands``), or,
        where the conversion cannot be fused, ``analog_columns``' weights with the tile
        columns stacked along the outputs, (tr, tc M + 1, R), and the offsets (tr, tc M, 2)
        (``PreparedTiles.stacked_columns``); for tiles that can leave the TIA's linear
        range, the prepared tiles for ``TileSurrogate.analog``."""
        if self._operands is None:
            tiles = self._tiles().sliced(self._rows_used, 2 * self._pairs_used)
            pair = self.chip.reader.pair_operands(tiles) if tiles.all_linear else None
            if pair is not None:
                self._operands = ("pairs", pair)
            elif tiles.all_linear:
                self._operands = ("columns", *tiles.stacked_columns())
            else:
                self._operands = ("planes", tiles)
        return self._operands

    def _code_differences(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ADC code differences of the pairs, (tr, tc, pairs, n), for 8-bit inputs ``q``
        (tr, R, n), and which vectors reach the top code on any column, (n,) bool."""
        reader = self.chip.reader
        gen = self.chip.noise if self.chip.read_noise else None
        ops = self._read_operands()
        tc, n = self.grid[1], q.shape[-1]
        top = reader.top_code
        if ops[0] == "columns":
            codes = reader.codes_columns(q, ops[1], ops[2], generator=gen, check=False)
            saturated = (codes >= top).view(-1, n).any(0)
            codes = codes.view(q.shape[0], tc, -1, 2, n)                # (tr, tc, P, 2, n)
            return codes[..., 0, :] - codes[..., 1, :], saturated
        d = reader.analog(q.transpose(1, 2)[:, None], ops[1], generator=gen, check=False)
        codes = reader.quantize(d, dtype=torch.float32)                 # (tr, tc, n, M)
        saturated = (codes >= top).transpose(2, 3).reshape(-1, n).any(0)
        return (codes[..., 0::2] - codes[..., 1::2]).transpose(2, 3), saturated

    def _pair_sums(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs' code differences summed over the tile rows with the tiles' digital
        scales, (tc P, n), for 8-bit inputs ``q`` (tr, R, n): fused with the conversion on
        the shortcut (``TileSurrogate.pair_sums_columns``); and which vectors reach the ADC's
        top code on any column of any tile, (n,) bool."""
        ops = self._read_operands()
        scale = self.tile_scale.detach()
        if ops[0] == "pairs":
            gen = self.chip.noise if self.chip.read_noise else None
            return self.chip.reader.pair_sums_columns(q, ops[1], scale, generator=gen,
                                                      check=False)
        diff, saturated = self._code_differences(q)                 # (tr, tc, P, n)
        if diff.shape[0] * diff.shape[1] == 1:
            return diff[0, 0] * scale[0, 0], saturated
        return torch.einsum("tcpn,tc->cpn", diff, scale).reshape(-1, q.shape[-1]), saturated

    def analog_columns(self, xt: torch.Tensor) -> torch.Tensor:
        """The analog result (out, n) for input vectors along the columns of ``xt`` (in, n)
        (no gradient): the layout in which convolution patches come.

        Each vector is scaled to 8 bits by its own peak; a vector that is zero everywhere
        has a digital scale of zero, so its result is zero whatever its codes and it is not
        read (images have many all-zero patches). A vector with negative entries takes a
        second read of its negated part, in the same call.

        Many vectors are read in chunks of at most ``chip.chunk_reads`` conversions, so
        that a chunk's accumulated voltages stay small enough for the caches."""
        if xt.shape[0] != self.in_features:
            raise ConfigError(f"input has {xt.shape[0]} features; the layer takes "
                              f"{self.in_features}")
        with torch.no_grad():
            x = xt.detach()
            n = x.shape[1]
            high = x.amax(dim=0)                                          # (n,)
            low = x.amin(dim=0)
            signed = bool(low.min() < 0)
            peak = torch.maximum(high, -low) if signed else high
            if not bool(torch.isfinite(peak).all()):       # NaN and inf reach the peaks
                raise NonFiniteValues(f"the input of the analog layer ({self.extra_repr()}) "
                                      "holds NaN or inf")
            reads = self.grid[0] * self.grid[1] * self.chip.cols * (2 if signed else 1)
            chunk = max(1, self.chip.chunk_reads // reads)
            if n <= chunk:
                return self._read_vectors(x, peak, signed)
            return torch.cat([self._read_vectors(x[:, k:k + chunk], peak[k:k + chunk],
                                                 signed)
                              for k in range(0, n, chunk)], dim=1)

    def _read_vectors(self, x: torch.Tensor, peak: torch.Tensor, signed: bool
                      ) -> torch.Tensor:
        """:meth:`analog_columns` of the vectors ``x`` (in, n) with their peaks (n,);
        ``signed``: read the negated parts too."""
        chip = self.chip
        top = chip.reader.input_levels - 1
        n = x.shape[1]
        active = torch.nonzero(peak).squeeze(1)
        if active.numel() == 0:
            return x.new_zeros((self.out_features, n))
        dense = active.numel() > _DENSE * n
        if not dense:
            x, peak = x.index_select(1, active), peak.index_select(0, active)
        # q = round(top |x| / peak), halves up, as whole numbers; the rows of the last
        # tile row that no input drives stay at zero
        scale = top / peak.clamp_min(1e-30)           # a zero vector: q = 0, no inf
        m = x.shape[1]
        parts = torch.cat([x.clamp(min=0), -x.clamp(max=0)], dim=1) if signed else x
        if signed:
            scale = torch.cat([scale, scale])
        y, saturated = self._pair_sums(self._inputs(parts, scale))   # (tc P, n')
        y = self._reread_saturated(parts, scale, y, saturated)
        if signed:
            y = y[:, :m] - y[:, m:]
        y = y[:self.out_features]
        y = y * (peak * (chip.code_to_dot * float(self.w_max)))
        if dense:
            return y
        return y.new_zeros((self.out_features, n)).index_copy_(1, active, y)

    def _inputs(self, parts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """8-bit inputs (tr, R, n), ``round(parts scale)`` halves up, for non-negative
        ``parts`` (in, n) and their scales (n,); the rows of the last tile row that no input
        drives stay at zero."""
        tr, r = self.grid[0], self._rows_used
        q = torch.empty((tr * r, parts.shape[1]), dtype=torch.int32, device=parts.device)
        q[self.in_features:] = 0
        q[:self.in_features] = torch.addcmul(parts.new_tensor(0.5), parts, scale)
        return q.view(tr, r, -1)

    def _reread_saturated(self, parts: torch.Tensor, scale: torch.Tensor, y: torch.Tensor,
                          saturated: torch.Tensor) -> torch.Tensor:
        """The controller's range management: each vector (a column of ``parts``) whose read
        reached the ADC's top code is read again with its inputs halved, and its result
        doubled, until no column saturates or ``saturation_rereads`` halvings are spent
        (the last read stands, clipped). Counts the vectors read and read again on the
        chip (``AnalogChip.reads``)."""
        chip = self.chip
        counts = chip.reads
        counts["vectors"] += parts.shape[1]
        if not bool(saturated.any()):
            return y
        which = torch.nonzero(saturated).squeeze(1)
        counts["saturated"] += which.numel()
        gain = 1.0
        for _ in range(chip.config.saturation_rereads):
            gain *= 0.5
            counts["reread"] += which.numel()
            again, saturated = self._pair_sums(self._inputs(
                parts.index_select(1, which), scale.index_select(0, which) * gain))
            y.index_copy_(1, which, again * (1.0 / gain))
            which = which[saturated]
            if which.numel() == 0:
                break
        counts["clipped"] += which.numel()
        return y

    def analog(self, x: torch.Tensor) -> torch.Tensor:
        """The analog result (B, out) for ``x`` (B, in) (no gradient)."""
        if x.shape[-1] != self.in_features:
            raise ConfigError(f"input has {x.shape[-1]} features; the layer takes "
                              f"{self.in_features}")
        return self.analog_columns(x.detach().T).T

    def effective_weight(self) -> torch.Tensor:
        """``weight`` times its tile's scale, (out, in): what the digital backward pass
        differentiates."""
        r, p = self._rows_used, self._pairs_used
        scale = self.tile_scale.T.repeat_interleave(p, 0).repeat_interleave(r, 1)
        return self.weight * scale[:self.out_features, :self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, in) -> (B, out): the analog result, with the gradient of
        ``x @ effective_weight().T`` (straight through)."""
        return _StraightThrough.apply(x, self.effective_weight(), _LinearOps(self))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, tiles={self.grid[0]}x"
                f"{self.grid[1]} of {self.chip.rows}x{self.chip.cols}, "
                f"w_max={float(self.w_max):.4g}")


class _LinearOps:
    """The analog forward and the digital gradients of ``x @ w.T`` (straight through)."""

    def __init__(self, tiles: AnalogTiles) -> None:
        self.tiles = tiles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tiles.analog(x)

    def gradients(self, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor,
                  need: tuple[bool, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (grad @ w if need[0] else None, grad.T @ x if need[1] else None)


class _ConvOps:
    """The analog forward and the digital gradients of the convolution (straight through)."""

    def __init__(self, conv: "AnalogConv2d") -> None:
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv.analog(x)

    def gradients(self, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor,
                  need: tuple[bool, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        c = self.conv
        w4 = w.view(c.out_channels, c.in_channels, *c.kernel_size)
        args = (c.stride, c.padding, c.dilation)
        gx = torch.nn.grad.conv2d_input(x.shape, w4, grad, *args) if need[0] else None
        gw = torch.nn.grad.conv2d_weight(x, w4.shape, grad, *args).view_as(w) \
            if need[1] else None
        return gx, gw


class _StraightThrough(torch.autograd.Function):
    """Forward: the analog result. Backward: the gradients of the digital layer with the
    effective weights, computed directly (the digital forward itself is never needed)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, ops: Any) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.ops = ops
        return ops.forward(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        gx, gw = ctx.ops.gradients(x, weight, grad.contiguous(), ctx.needs_input_grad[:2])
        return gx, gw, None


@dataclass(frozen=True)
class ProgramPlan:
    """Devices of one layer to write: ``select`` (tile layout), the same as indices into
    the flattened tile layout (``where``, in order) and their target levels."""

    layer: AnalogTiles
    select: torch.Tensor
    where: torch.Tensor
    levels: torch.Tensor


def program_plans(plans: list[ProgramPlan], *, count: bool = True) -> list[WriteStats]:
    """Write every plan's devices in ONE write-and-verify call per chip (the procedure's
    pulse loop costs per step, not per device); count writes and pulses per device; then
    prepare the written tiles of all layers for reading, again in one call per chip."""
    stats = [WriteStats(0, 0, 0)] * len(plans)
    by_chip: dict[int, list[int]] = {}
    for i, plan in enumerate(plans):
        if plan.levels.numel():
            by_chip.setdefault(id(plan.layer.chip), []).append(i)
    for idx in by_chip.values():
        chip = plans[idx[0]].layer.chip
        spacing = (chip.g_hi - chip.g_lo) / (chip.levels - 1)
        parts = [plans[i] for i in idx]
        targets = torch.cat([chip.g_lo + p.levels.to(torch.float32) * spacing for p in parts])
        kd, wd, state = (torch.cat([getattr(p.layer, name).view(-1).index_select(0, p.where)
                                    for p in parts]) for name in ("kd", "wd", "state"))
        if chip.statistical is not None:
            res = chip.statistical.program(targets, Devices(kd=kd, wd=wd),
                                           generator=chip.generator)
        else:
            res = chip.programmer.program(targets, Devices(kd=kd, wd=wd), state=state,
                                          generator=chip.generator,
                                          read_noise=chip.verify_noise)
        start = 0
        for i, p in zip(idx, parts):
            n = p.levels.numel()
            part = slice(start, start + n)
            start += n
            layer = p.layer
            layer.state.view(-1).index_copy_(0, p.where, res.state[part])
            layer.target_level.view(-1).index_copy_(0, p.where,
                                                    p.levels.to(layer.target_level.dtype))
            pulses = res.pulses[part].to(torch.int64)
            if count:
                layer.write_count.view(-1).index_add_(
                    0, p.where, torch.ones_like(p.where, dtype=layer.write_count.dtype))
                layer.pulse_count.view(-1).index_add_(0, p.where, pulses)
            stats[i] = WriteStats(n, int(pulses.sum()), int((~res.success[part]).sum()))
        _reprepare(chip, [p.layer for p in parts], [p.select for p in parts])
    return stats


def _reprepare(chip: AnalogChip, layers: list[AnalogTiles], selects: list[torch.Tensor]
               ) -> None:
    """Recompute the read preparation (``TileSurrogate.prepare``) of the tiles in which
    ``selects`` wrote, for all ``layers`` in one batched call; the other tiles keep theirs."""
    which, g = [], []
    for layer, select in zip(layers, selects):
        if layer._prepared is None:           # prepared in full when next read
            which.append(None)
            continue
        tiles = select.flatten(2).any(-1)                                  # (tr, tc)
        which.append(tiles)
        # every device's conductance is one compiled pass; gathering the tiles' states and
        # devices first would cost more where most tiles were written
        conductance = layer.conductances()                           # (tr, tc, R, C)
        g.append(conductance.flatten(0, 1) if bool(tiles.all()) else conductance[tiles])
    if not g:
        return
    # each layer takes the settling components its own tiles need (_update_tiles)
    prepared = chip.reader.prepare(torch.cat(g), check=False, bound=False)
    start = 0
    for layer, tiles in zip(layers, which):
        if tiles is None:
            continue
        k = int(tiles.sum())
        part = PreparedTiles(*(getattr(prepared, f.name)[start:start + k]
                               for f in fields(PreparedTiles)))
        layer._update_tiles(tiles, part)
        start += k


class AnalogLinear(nn.Module):
    """``nn.Linear`` on analog tiles: ``AnalogLinear(in, out, bias=True, *, chip)``.

    The bias is digital. :meth:`from_linear` converts a trained ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 chip: AnalogChip, weight: torch.Tensor | None = None,
                 range_margin: float = 1.0) -> None:
        super().__init__()
        if weight is None:
            ref = nn.Linear(in_features, out_features, bias=False)
            weight = ref.weight.detach()
        self.in_features, self.out_features = in_features, out_features
        self.tiles = AnalogTiles(weight, chip, range_margin=range_margin)
        self.bias = nn.Parameter(torch.zeros(out_features, device=chip.device)) if bias \
            else None

    @classmethod
    def from_linear(cls, layer: nn.Linear, chip: AnalogChip, *,
                    range_margin: float = 1.0) -> "AnalogLinear":
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, chip=chip,
                  weight=layer.weight.detach(), range_margin=range_margin)
        if layer.bias is not None:
            new.bias.data.copy_(layer.bias.detach().to(chip.device))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.tiles(x.reshape(-1, x.shape[-1]))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class AnalogConv2d(nn.Module):
    """``nn.Conv2d`` on analog tiles (convolution as unfolded patches, one VMM per patch):
    ``AnalogConv2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    dilation=1, groups=1, bias=True, *, chip)``. Only ``groups=1`` maps onto tiles."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any,
                 stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                 bias: bool = True, *, chip: AnalogChip, weight: torch.Tensor | None = None,
                 range_margin: float = 1.0) -> None:
        super().__init__()
        if groups != 1:
            raise ConfigError("AnalogConv2d maps only groups=1 convolutions onto tiles")
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                        bias=False)
        if weight is None:
            weight = ref.weight.detach()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = ref.kernel_size, ref.stride
        self.padding, self.dilation = ref.padding, ref.dilation
        if isinstance(self.padding, str):
            raise ConfigError("AnalogConv2d needs numeric padding")
        self.tiles = AnalogTiles(weight.reshape(out_channels, -1), chip,
                                 range_margin=range_margin)
        self.bias = nn.Parameter(torch.zeros(out_channels, device=chip.device)) if bias \
            else None

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, chip: AnalogChip, *,
                  range_margin: float = 1.0) -> "AnalogConv2d":
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                  chip=chip, weight=layer.weight.detach(), range_margin=range_margin)
        if layer.bias is not None:
            new.bias.data.copy_(layer.bias.detach().to(chip.device))
        return new

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The input patches of ``x`` (B, C, H, W) as columns, (C kh kw, B OH OW): the
        input vectors of the tiles, in the weight's (C, kh, kw) order."""
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        kh, kw = self.kernel_size
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        v = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
        if dh > 1 or dw > 1:
            v = v[..., ::dh, ::dw]                                  # (B, C, OH, OW, kh, kw)
        return v.permute(1, 4, 5, 0, 2, 3).reshape(self.in_channels * kh * kw, -1)

    def analog(self, x: torch.Tensor) -> torch.Tensor:
        """The analog convolution of ``x`` (B, C, H, W), every patch one read of the tiles
        (no gradient, no bias)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"input of shape {tuple(x.shape)}: the layer takes (batch, "
                              f"{self.in_channels}, height, width)")
        with torch.no_grad():
            (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
            kh, kw = self.kernel_size
            oh = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            ow = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            y = self.tiles.analog_columns(self.patches(x.detach()))      # (out, B OH OW)
            return y.view(self.out_channels, x.shape[0], oh, ow).transpose(0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The analog convolution (every patch one VMM on the tiles), with the gradient of
        the digital convolution by the tiles' effective weights (straight through)."""
        y = _StraightThrough.apply(x, self.tiles.effective_weight(), _ConvOps(self))
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y


def from_digital(model: nn.Module, chip: AnalogChip, *, range_margin: float = 1.0
                 ) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` (groups=1) of ``model`` by its analog
    counterpart on ``chip``, in place, with the trained weights programmed onto the tiles;
    returns the model (moved to the chip's device). Other layers stay digital."""
    model.to(chip.device)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, AnalogLinear.from_linear(child, chip,
                                                          range_margin=range_margin))
        elif isinstance(child, nn.Conv2d) and child.groups == 1:
            setattr(model, name, AnalogConv2d.from_conv(child, chip,
                                                        range_margin=range_margin))
        else:
            from_digital(child, chip, range_margin=range_margin)
    return model


def analog_layers(model: nn.Module) -> Iterator[tuple[str, AnalogTiles]]:
    """``(name, tiles)`` of every analog weight matrix in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, AnalogTiles):
            yield name, module
