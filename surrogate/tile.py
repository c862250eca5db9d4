"""The surrogate tile: a 1T1R tile's bit-serial read in torch, from the calibration table alone.

A read of a tile with cell conductances ``g`` (N rows x M columns) and 8-bit inputs ``x``
(N,) goes, in the circuit and here, through these stages (each calibrated in ngspice; the
surface that describes it in brackets):

1. Bit-plane ``k`` (LSB first) drives row ``i`` at ``v_read * bit_k(x_i)`` for one bit time.
2. The cells and lines form a linear resistive network (``array``): the column currents are
   ``C_k = (v_read b_k - v_offset) @ W(g)`` with ``W`` the tile's effective conductance
   matrix (``calibration.irdrop``; IR drop on rows and columns, the drivers, the TIAs'
   virtual ground). ``W`` depends on ``g`` only and is computed once per programming
   (:meth:`TileSurrogate.prepare`).
3. Each column's TIA turns ``C_k`` into a voltage (``tia``): DC gain ``R_f A / (1 + A)``
   between soft rails, sampled before it has fully settled. The sample of bit ``k`` is a
   linear first-order response to the inputs of bits ``k`` and ``k - 1`` and to the previous
   sample: ``y_k = alpha u_k + eps u_(k-1) + rho y_(k-1)`` with ``u`` the settled output,
   ``alpha`` the fraction settled from rest, ``rho = exp(-t_bit / tau)`` and ``eps`` chosen so
   that a repeated bit reaches the measured ``settled_fraction_repeat``; that is
   ``y = H u`` with ``H`` lower-triangular Toeplitz.
4. The multi-cycle front-end accumulates ``D = sum_k w_k y_k + d_offset`` with the bit
   weights ``w`` solved in ngspice (``adc``), and the ADC converts ``D`` (plus its
   input-referred noise) against the measured transition levels.

The algebraic shortcut. Everything from 2 to 4 is linear while no TIA leaves its linear
range, so the accumulated voltage is ``D = sum_k a_k u_k + d_offset`` with ``a = w H`` and
``u_k = G C_k``; substituting ``C_k``::

    D = lut[x] @ (G v_read W) + const,     lut[v] = sum_k a_k bit_k(v)

one table lookup per input and ONE GEMM for all eight bit-planes. Whether a tile qualifies
is decided once per programming from a bound (every input bit at 1 on a column,
``G v_read sum_i W_ij`` within ``tia_linear_limit_v``); tiles that can reach a rail (e.g.
256-row tiles at high conductance) take the exact path instead: the eight planes' currents
in one batched GEMM, the TIA's DC transfer interpolated from the table for each, then the
same ``a``. The validation (``surrogate.validate``) compares both against full ngspice
solves. :meth:`TileSurrogate.analog_columns` and :meth:`TileSurrogate.codes_columns` are the
shortcut with the input vectors along the last axis (the layout of unfolded convolutions;
what the training layers use), the ADC's LSB folded into the operands for the codes.

Noise (seeded through a ``torch.Generator``, or drawn from a
:class:`~surrogate.normal_stream.NormalStream`; off without either). Read noise: every
cell read (one per bit-plane) deviates by ``N(0, sigma_g^2)`` with ``sigma_g =
read_noise_s`` (``SurrogateConfig.read_noise``, stated against the levels' window; not in
the SPICE decks, which are deterministic). Its effect on ``D`` is Gaussian with variance
``(G v_read sigma_g)^2 sum_i sum_k a_k^2 bit_k(x_i)``, drawn directly (the same distribution
as eight planes of per-cell draws, at the cost of one draw per output). ADC noise: the
table's ``noise_v_rms``, added to ``D`` before the conversion.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from calibration.store import Table
from netlists.adc_model import adc_model
from netlists.config import HardwareConfig, SurrogateConfig
from netlists.errors import ConfigError, TableError
from surrogate import fused
from surrogate.network import fast_effective_conductance
from surrogate.normal_stream import NormalStream

__all__ = ["TileSurrogate", "PreparedTiles", "PairOperands", "TileRead",
           "effective_conductance"]

_METHODS = ("exact", "fast")

#: Where noise comes from: a generator, or a counter-based stream of normals.
Draws = torch.Generator | NormalStream


def _rev_cumsum(a: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.flip(torch.cumsum(torch.flip(a, (dim,)), dim), (dim,))


def _line_loss(cur: torch.Tensor, r: tuple[float, float, float, float]) -> torch.Tensor:
    """``calibration.irdrop.line_loss`` in torch."""
    r_drv, r_row, r_col, r_vg = r
    row_seg = _rev_cumsum(cur, -1)
    col_seg = torch.cumsum(cur, -2)
    return (r_drv * row_seg[..., :1] + r_row * torch.cumsum(row_seg, -1)
            + r_vg * col_seg[..., -1:, :] + r_col * _rev_cumsum(col_seg, -2))


@functools.lru_cache(maxsize=16)
def _line_matrices(r: tuple[float, float, float, float], rows: int, cols: int,
                   dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``line_loss(c) = c @ A + B @ c`` for currents ``c`` (..., rows,
    cols): ``A[j', j] = r_drv + r_row (min(j, j') + 1)``, ``B[k, i] = r_vg + r_col (rows -
    max(i, k))`` (the segments two cells share on their row, on their column)."""
    r_drv, r_row, r_col, r_vg = r
    j = torch.arange(cols, dtype=dtype, device=device)
    k = torch.arange(rows, dtype=dtype, device=device)
    along_row = r_drv + r_row * (torch.minimum(j[:, None], j[None, :]) + 1.0)
    along_col = r_vg + r_col * (rows - torch.maximum(k[:, None], k[None, :]))
    return along_row, along_col


def _unit_responses(g: torch.Tensor, r: tuple[float, float, float, float],
                    iterations: int) -> torch.Tensor:
    """(..., N, M): row ``k`` holds the column currents with 1 V on row ``k`` alone."""
    rho = torch.clamp(torch.amax(_line_loss(g, r), dim=(-2, -1)), min=0.0)
    w = (2.0 / (2.0 + rho))[..., None, None, None]
    gg = g[..., None, :, :]
    drive = torch.eye(g.shape[-2], dtype=g.dtype, device=g.device)[..., None]
    cur = gg * drive
    for _ in range(iterations):
        cur = cur + w * (gg * (drive - _line_loss(cur, r)) - cur)
    return cur.sum(-2)


def effective_conductance(g: torch.Tensor, coefficients: Any, *, iterations: int,
                          method: str = "exact") -> torch.Tensor:
    """``W`` (..., N, M) with ``C = (v - v_offset) @ W``: ``calibration.irdrop``'s
    ``effective_conductance`` in torch (same methods, same iteration)."""
    r = tuple(float(c) for c in np.asarray(coefficients, dtype=float).ravel())
    if len(r) != 4:
        raise ConfigError(f"IR-drop coefficients need 4 values, got {len(r)}")
    if g.ndim < 2:
        raise ConfigError(f"g must have shape (..., rows, cols), got {tuple(g.shape)}")
    rows, cols = g.shape[-2:]
    if method == "exact":
        if cols < rows:  # reciprocity: drive each column at its TIA end (see irdrop)
            gt = torch.swapaxes(torch.flip(g, (-2, -1)), -1, -2)
            wt = _unit_responses(gt, (r[3], r[2], r[1], r[0]), iterations)
            return torch.swapaxes(torch.flip(wt, (-2, -1)), -1, -2)
        return _unit_responses(g, r, iterations)
    if method == "fast":
        if g.device.type == "cpu" and g.dtype in (torch.float32, torch.float64):
            return fast_effective_conductance(g, r, iterations)
        return _fast_torch(g, r, iterations)
    raise ConfigError(f"method = {method!r} is not allowed: choose one of {list(_METHODS)}")


def _fast_torch(g: torch.Tensor, r: tuple[float, float, float, float],
                iterations: int) -> torch.Tensor:
    """``effective_conductance``'s ``"fast"`` iteration in torch (any device): the compiled
    one's reference (``surrogate.network``)."""
    # The line loss is linear in the currents along each line: with the row and column
    # sums written as matrices (calibration.irdrop's dR and dC), one iteration is two
    # small GEMMs and an update, whatever the number of tiles.
    rows, cols = g.shape[-2:]
    along_row, along_col = _line_matrices(r, rows, cols, g.dtype, g.device)
    out = g
    for step in range(iterations):
        loss = torch.matmul(out, along_row).add_(torch.matmul(along_col, out))
        if step == 0:  # the loss of g itself bounds the map's spectral radius
            rho = torch.amax(loss, dim=(-2, -1))
            w = (2.0 / (2.0 + torch.clamp(rho, min=0.0)))[..., None, None]
        out = torch.lerp(out, loss.neg_().add_(1.0).mul_(g), w)
    return out


@dataclass(frozen=True)
class PreparedTiles:
    """Programmed tiles ready to read: what :meth:`TileSurrogate.prepare` computes once.

    ``g`` (..., N, M) S; ``w_scaled`` = ``G v_read W`` times each column's coefficient on
    the first settling component (V per unit of ``lut``); ``offset_v`` (..., M) the constant
    part of ``D``; ``linear`` True where no TIA of the tile can leave its linear range (the
    shortcut is exact there); ``w`` = ``W`` in S; ``plane_weights`` (..., M, bits) each
    column's weight of each bit-plane's settled output in ``D`` (its TIA's settling on that
    column's conductance); ``w_extra`` (..., R - 1, N, M) the further settling components'
    operands (``R = rank``, see :class:`TileSurrogate`); ``noise_scale`` (..., M) each
    column's read-noise variance relative to the noise lookup's.
    """

    g: torch.Tensor
    w: torch.Tensor
    w_scaled: torch.Tensor
    offset_v: torch.Tensor
    linear: torch.Tensor
    #: (...,): the read-noise variance of ``D`` per unit of the noise lookup, per input (V^2)
    noise_unit: torch.Tensor
    plane_weights: torch.Tensor
    w_extra: torch.Tensor
    noise_scale: torch.Tensor

    @property
    def w_noise(self) -> torch.Tensor:
        """(..., 2N, M + 1): ``w_scaled`` on the even rows, ``noise_unit`` in the last column
        of the odd rows; one GEMM of the interleaved lookup gives ``D`` and its noise
        variance together (:meth:`TileSurrogate.analog`)."""
        n, m = self.w_scaled.shape[-2:]
        ext = self.w_scaled.new_zeros((*self.w_scaled.shape[:-2], 2 * n, m + 1))
        ext[..., 0::2, :m] = self.w_scaled
        ext[..., 1::2, m] = self.noise_unit[..., None]
        return ext

    @property
    def all_linear(self) -> bool:
        return bool(torch.all(self.linear))

    @property
    def rank(self) -> int:
        """Settling components the shortcut reads (1: one lookup and one GEMM)."""
        return 1 + self.w_extra.shape[-3]

    def put(self, which: torch.Tensor, part: "PreparedTiles") -> None:
        """Write the tiles ``part`` into these at the places ``which`` (in place); ``part``
        must have this rank."""
        if part.rank != self.rank:
            raise ConfigError(f"tiles of settling rank {part.rank} cannot replace tiles of "
                              f"rank {self.rank}")
        for f in dataclasses.fields(self):
            getattr(self, f.name)[which] = getattr(part, f.name)

    def columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The operands of :meth:`TileSurrogate.analog_columns`: ``weights`` (..., M + 1,
        R N), the settling components' operands transposed side by side (``w_scaled``
        first) with the read-noise variance per unit of the noise lookup as the first N
        entries of the last row, and ``offset`` (..., M, 2): each column's constant part of
        ``D`` and its ``noise_scale``."""
        n, m = self.w_scaled.shape[-2:]
        r = self.rank
        weights = self.w_scaled.new_zeros((*self.w_scaled.shape[:-2], m + 1, r * n))
        weights[..., :m, :n] = self.w_scaled.transpose(-1, -2)
        for k in range(1, r):
            weights[..., :m, k * n:(k + 1) * n] = self.w_extra[..., k - 1, :, :].transpose(-1, -2)
        weights[..., m, :n] = self.noise_unit[..., None]
        return weights, torch.stack([self.offset_v, self.noise_scale], dim=-1)

    def stacked_columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`columns` of a layer's tiles (tr, tc, ...) with the tile columns stacked
        along the outputs: ``weights`` (tr, tc M + 1, R N) (the read-noise row of tile
        column 0 last) and ``offset`` (tr, tc M, 2); the operands of
        :meth:`TileSurrogate.codes_columns` for inputs (tr, N, B)."""
        weights, offset = self.columns()                            # (tr, tc, M + 1, R N)
        tr, tc, m1, rn = weights.shape
        stacked = torch.cat([weights[:, :, :-1].reshape(tr, tc * (m1 - 1), rn),
                             weights[:, 0, -1:]], dim=1)
        return stacked, offset.reshape(tr, -1, 2)

    def sliced(self, rows: int, cols: int) -> "PreparedTiles":
        """The same tiles read on their first ``rows`` rows and ``cols`` columns only (exact:
        rows without input carry no current, and columns are independent once W is
        known)."""
        return PreparedTiles(g=self.g[..., :rows, :cols], w=self.w[..., :rows, :cols],
                             w_scaled=self.w_scaled[..., :rows, :cols],
                             offset_v=self.offset_v[..., :cols], linear=self.linear,
                             noise_unit=self.noise_unit,
                             plane_weights=self.plane_weights[..., :cols, :],
                             w_extra=self.w_extra[..., :rows, :cols],
                             noise_scale=self.noise_scale[..., :cols])


@dataclass(frozen=True)
class PairOperands:
    """:meth:`TileSurrogate.pair_sums_columns`' operands: ``w`` (tr, M, R N) the stacked
    columns' weights in LSB per unit of the lookup, ``noise`` (tr, 1, R N) the read-noise
    variance per unit of the noise lookup (V^2), ``offset`` (tr, M) each column's constant
    part of ``D`` in LSB with the rounding's half LSB, ``noise_scale`` (tr, M)."""

    w: torch.Tensor
    noise: torch.Tensor
    offset: torch.Tensor
    noise_scale: torch.Tensor


@dataclass(frozen=True)
class TileRead:
    """A read: ``analog_v`` the accumulated front-end voltage ``D`` (..., B, M) before the
    conversion (noise included when drawn), ``codes`` the ADC codes (same shape, int64)."""

    analog_v: torch.Tensor
    codes: torch.Tensor


#: The shortcut reads as many settling components as keep its bound on the error of every
#: column (all inputs at full scale) below this many LSB.
SETTLING_TOLERANCE_LSB = 0.02


def _settled_weights(bit_weight: np.ndarray, from_rest: float, repeat: float, tau_s: float,
                     t_bit_s: float) -> np.ndarray:
    """Each bit-plane's weight ``a`` in ``D`` (``D = sum_l a_l u_l``, ``u`` the settled
    outputs) for a TIA that settles ``from_rest`` of a step from rest and ``repeat`` of a
    repeated bit, with time constant ``tau_s``: ``a = w H`` (module docstring)."""
    bits = bit_weight.size
    rho = math.exp(-t_bit_s / tau_s) if tau_s > 0 else 0.0
    eps = repeat - from_rest - rho * from_rest
    h = np.zeros(bits)
    h[0] = from_rest
    if bits > 1:
        h[1] = eps + rho * from_rest
    for j in range(2, bits):
        h[j] = rho * h[j - 1]
    big_h = np.zeros((bits, bits))
    for k in range(bits):
        big_h[k, :k + 1] = h[k::-1]
    return bit_weight @ big_h


def _settling_basis(load_a: np.ndarray) -> np.ndarray:
    """The settling components, (bits, bits) orthonormal rows, of the plane weights
    ``load_a`` (loads, bits) ordered from the lightest load: first the lightest load's own
    weights (its TIA settles the most), then the directions in which heavier loads depart
    from them, largest first.

    Columns of trained weights are light (most devices of a pair near their floor), and on
    them the first component alone is within ``SETTLING_TOLERANCE_LSB`` (one lookup and one
    GEMM); the leading singular vectors of all loads would split even the light columns'
    weights over two components, the heavy loads pulling the first one towards them."""
    first = load_a[0] / np.linalg.norm(load_a[0])
    departure = load_a - np.outer(load_a @ first, first)
    _, _, directions = np.linalg.svd(departure, full_matrices=True)
    # Householder QR: orthonormal whatever the rank of the departures
    q, _ = np.linalg.qr(np.column_stack([first, directions.T]))
    basis = q.T
    return basis * np.sign(basis.sum(axis=1, keepdims=True) + 1e-300)


def _slope(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x[mask], y[mask], 1)
    return float(slope), float(intercept)


class TileSurrogate:
    """The read path of a tile (module docstring), built from a calibration :class:`Table`.

    ``method``: how ``W(g)`` is computed (``"exact"``: N unit solves; ``"fast"``: the matrix
    iteration, N times cheaper; see ``calibration.irdrop``). Tensors live on ``device`` in
    ``dtype`` (float32 by default). ``rows``/``cols`` model a tile of another size than the
    calibrated one with the same per-segment line resistances, TIA and ADC (the network's
    coefficients are per segment; ``circuitsim validate --rows --cols`` measures how well
    that carries over).
    """

    def __init__(self, table: Table, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, method: str = "exact",
                 rows: int | None = None, cols: int | None = None,
                 config: SurrogateConfig | None = None) -> None:
        if method not in _METHODS:
            raise ConfigError(f"method = {method!r} is not allowed: choose one of "
                              f"{list(_METHODS)}")
        self.table_path = table.path
        hw = table.hardware()
        calibrated = (hw.array.rows, hw.array.cols)
        if rows is not None or cols is not None:
            hw = hw.replace(array={"rows": hw.array.rows if rows is None else rows,
                                   "cols": hw.array.cols if cols is None else cols})
        self.hw: HardwareConfig = hw
        self.method = method
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.config = SurrogateConfig() if config is None else config
        if not isinstance(self.config, SurrogateConfig):
            raise ConfigError(f"config = {config!r} must be a SurrogateConfig")
        array, tia, adc = table.surface("array"), table.surface("tia"), table.surface("adc")
        window = table.read_window()
        try:
            self.coefficients = np.asarray(array.datasets["coefficients_ohm"].data, float)
            self.iterations = int(array.attrs["iterations"])
            self.v_offset_v = float(array.attrs["v_offset_v"])
            self.linear_limit_v = float(array.attrs["tia_linear_limit_v"])
            i_in = np.asarray(tia.axes["i_in"].data, float)
            v_dc = np.asarray(tia.datasets["v_out"].data, float)
            v_rest = np.asarray(tia.datasets["v_out_sampled"].data, float)
            v_rep = np.asarray(tia.datasets["v_out_sampled_repeat"].data, float)
            tau = float(tia.attrs["closed_loop_tau_s"])
            g_load = np.asarray(tia.axes["g_source"].data, float)
            rest_load = np.asarray(tia.datasets["settled_fraction_load"].data, float)
            rep_load = np.asarray(tia.datasets["settled_fraction_repeat_load"].data, float)
            tau_load = np.asarray(tia.datasets["closed_loop_tau_load"].data, float)
            bit_weight = np.asarray(adc.datasets["bit_weight"].data, float)
            d_offset = float(np.asarray(adc.datasets["d_offset"].data))
            transitions = np.asarray(adc.datasets["transition_v"].data, float)
            self.adc_noise_v = float(adc.attrs["noise_v_rms"])
        except KeyError as err:
            raise TableError(f"{table.path}: the calibration lacks {err} that the surrogate "
                             "needs; recalibrate with this version (`circuitsim calibrate "
                             "--force`)") from None
        if calibrated != tuple(array.datasets["effective_conductance_s"].data.shape[-2:]):
            raise TableError(f"{table.path}: the array surface's tiles do not match the "
                             "hardware's rows x cols")
        bits = hw.drive.input_bits
        if bit_weight.shape != (bits,):
            raise TableError(f"{table.path}: the adc surface has {bit_weight.size} bit "
                             f"weights for {bits} input bits")
        self.window_s = window
        # The table's iteration count suits its own tile; another size may need more: enough
        # that the damped Jacobi error (a factor rho / (2 + rho) per step, rho with every
        # cell at the top of the window) falls below 1e-5.
        top = torch.full((self.rows, self.cols), window[1], dtype=torch.float64)
        rho = float(torch.amax(_line_loss(top, tuple(float(c) for c in self.coefficients))))
        shrink = max(rho, 0.0) / (2.0 + max(rho, 0.0))
        if shrink > 0:
            self.iterations = max(self.iterations,
                                  math.ceil(math.log(1e-5) / math.log(shrink)))

        # TIA: DC gain on the feedback current (the array surface's column current), and the
        # sampled fractions from the table's Norton-source runs, relative to its DC slope.
        linear = np.abs(v_dc) <= self.linear_limit_v
        s_dc, u0 = _slope(i_in, v_dc, linear)
        s_rest, _ = _slope(i_in, v_rest, linear)
        s_rep, _ = _slope(i_in, v_rep, linear)
        gain = hw.tia.r_feedback_ohm * hw.tia.open_loop_gain / (1.0 + hw.tia.open_loop_gain)
        self.tia_gain_ohm = gain
        alpha = s_rest / s_dc
        t_bit = hw.drive.t_bit_s
        a = _settled_weights(bit_weight, alpha, s_rep / s_dc, tau, t_bit)
        self.plane_weights = a                       # D = sum_l a_l u_l + d_offset
        rho = math.exp(-t_bit / tau) if tau > 0 else 0.0
        self.tia_settling = {"alpha": alpha, "eps": s_rep / s_dc - alpha - rho * alpha,
                             "rho": rho}
        # Each column's own settling: the plane weights on each calibrated load, and the
        # orthonormal basis of them that the shortcut reads (_settling_basis).
        load_a = np.stack([_settled_weights(bit_weight, f, r, t, t_bit)
                           for f, r, t in zip(rest_load, rep_load, tau_load)])
        basis = _settling_basis(load_a)
        self.u0_v = -u0                              # settled "-v_out" at zero current
        self.d_offset_v = d_offset
        levels = np.arange(2 ** bits)
        planes = ((levels[:, None] >> np.arange(bits)) & 1).astype(float)   # (256, bits)
        kw = {"device": self.device, "dtype": dtype}
        self._g_load = torch.as_tensor(g_load, dtype=torch.float64)
        self._a_load = torch.as_tensor(load_a, dtype=torch.float64)
        self._basis = torch.as_tensor(basis, dtype=torch.float64)  # rows orthonormal
        self._noise_ref = float(np.sum(a ** 2))       # the noise lookup's sum of a^2
        # Per input value: its weight in D on each settling component (columns 0..bits-1)
        # and in D's read-noise variance (last column).
        self.lut_basis = torch.as_tensor(
            np.concatenate([planes @ basis.T, (planes @ (a ** 2))[:, None]], axis=1), **kw)
        self.lut2 = self.lut_basis[:, [0, bits]].contiguous()
        self._lut_columns = (self.lut2[:, 0].contiguous(), self.lut2[:, 1].contiguous())
        self.plane_a = torch.as_tensor(a, **kw)
        self.planes = torch.as_tensor(planes, **kw)
        # The exact path's TIA transfer: the table's DC curve, indexed by the feedback
        # current scaled so that its linear part has the gain above.
        self._i_axis = (float(i_in[0]), float(i_in[1] - i_in[0]), i_in.size)
        self._i_scale = gain / abs(s_dc)               # slope |s_dc| x scale = gain
        self._u_table = torch.as_tensor(-v_dc, **kw)
        self.transitions = torch.as_tensor(transitions, **kw)
        adc_ideal = adc_model(hw)
        lsb = adc_ideal.lsb_v
        self.lsb_v = lsb
        self.top_code = adc_ideal.top_code
        ideal = adc_ideal.ideal_transitions_v()
        self._uniform_adc = (transitions.shape == ideal.shape
                             and float(np.max(np.abs(transitions - ideal))) <= 1e-3 * lsb)
        self.read_noise_s = self.config.read_noise_s(hw.levels.window(window), hw.levels.count)

    # -- shape ---------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self.hw.array.rows

    @property
    def cols(self) -> int:
        return self.hw.array.cols

    @property
    def lut(self) -> torch.Tensor:
        """(2^bits,): each input value's weight in ``D`` (the shortcut's lookup)."""
        return self.lut2[:, 0]

    @property
    def input_levels(self) -> int:
        return 2 ** self.hw.drive.input_bits

    def to(self, device: torch.device | str) -> "TileSurrogate":
        """Move the constant tensors to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        for name in ("lut2", "lut_basis", "plane_a", "planes", "_u_table", "transitions",
                     "_g_load", "_a_load", "_basis"):
            setattr(self, name, getattr(self, name).to(self.device))
        self._lut_columns = (self.lut2[:, 0].contiguous(), self.lut2[:, 1].contiguous())
        return self

    # -- programming -------------------------------------------------------------------------
    def column_plane_weights(self, colsum: torch.Tensor) -> torch.Tensor:
        """(..., M, bits): each column's plane weights on its conductance ``colsum`` (...,
        M) (S, the column seen from its TIA), interpolated between the calibrated loads
        (held at the nearest end outside them)."""
        g_axis, a_axis = self._g_load, self._a_load
        gs = colsum.to(torch.float64).clamp(float(g_axis[0]), float(g_axis[-1]))
        hi = torch.searchsorted(g_axis, gs.contiguous()).clamp(1, g_axis.numel() - 1)
        lo = hi - 1
        frac = ((gs - g_axis[lo]) / (g_axis[hi] - g_axis[lo]))[..., None]
        return a_axis[lo] * (1 - frac) + a_axis[hi] * frac

    def prepare(self, g: torch.Tensor, *, check: bool = True, rank: int | None = None,
                bound: bool = True) -> PreparedTiles:
        """Tiles of conductances ``g`` (..., N, M) in S -> what a read needs (module
        docstring). ``check=False`` skips the test that ``g`` is finite and non-negative
        (for conductances that the programming model computed). ``rank``: at least this
        many settling components (default: as few as keep every column within
        ``SETTLING_TOLERANCE_LSB``); with ``bound=False`` exactly ``rank`` (default 1),
        whatever the tiles need (:meth:`settling_rank` tells)."""
        g = torch.as_tensor(g, dtype=self.dtype, device=self.device)
        if g.shape[-2:] != (self.rows, self.cols):
            raise ConfigError(f"conductances of shape {tuple(g.shape)}: the tile is "
                              f"{self.rows} x {self.cols} (..., rows, cols)")
        if check and (not bool(torch.all(torch.isfinite(g))) or bool(torch.any(g < 0))):
            raise ConfigError("conductances must be finite and non-negative (S)")
        v_read = self.hw.drive.v_read_v
        w = effective_conductance(g, self.coefficients, iterations=self.iterations,
                                  method=self.method)
        colsum = w.sum(-2)                                            # (..., M)
        gain = self.tia_gain_ohm
        peak = self._peak(colsum)
        linear = torch.all(peak <= self.linear_limit_v, dim=-1)      # (...,)
        a_cols = self.column_plane_weights(colsum)                   # (..., M, bits) f64
        total_a = a_cols.sum(-1).to(w.dtype)
        offset = (-gain * self.v_offset_v * total_a * colsum
                  + self.u0_v * total_a + self.d_offset_v)
        plane_weights = a_cols.to(w.dtype)
        coef = self._coefficients(plane_weights)                     # (..., M, bits)
        r = self._settling_rank(plane_weights, coef, peak, rank) if bound \
            else self._check_rank(1 if rank is None else rank)
        coef = coef.to(w.dtype)
        base = (gain * v_read) * w
        w_scaled = base * coef[..., None, :, 0]
        noise_unit = w.new_full(w.shape[:-2], (gain * v_read * self.read_noise_s) ** 2)
        noise_scale = ((a_cols ** 2).sum(-1) / self._noise_ref).to(w.dtype)
        return PreparedTiles(g=g, w=w, w_scaled=w_scaled, offset_v=offset, linear=linear,
                             noise_unit=noise_unit, plane_weights=plane_weights,
                             w_extra=self._extra_components(base, coef, r),
                             noise_scale=noise_scale)

    def settling_rank(self, tiles: PreparedTiles) -> int:
        """The fewest settling components that read ``tiles`` within
        ``SETTLING_TOLERANCE_LSB`` (what :meth:`prepare` chooses by default)."""
        pw = tiles.plane_weights
        return self._settling_rank(pw, self._coefficients(pw), self._peak(tiles.w.sum(-2)),
                                   None)

    def with_rank(self, tiles: PreparedTiles, rank: int) -> PreparedTiles:
        """``tiles`` read on ``rank`` settling components: what :meth:`prepare` gives with
        that rank, from the prepared fields (no network solve). A rank below
        :meth:`settling_rank` leaves the tolerance: the caller's choice."""
        rank = self._check_rank(rank)
        if rank == tiles.rank:
            return tiles
        w = tiles.w
        coef = self._coefficients(tiles.plane_weights).to(w.dtype)
        base = (self.tia_gain_ohm * self.hw.drive.v_read_v) * w
        return dataclasses.replace(tiles, w_extra=self._extra_components(base, coef, rank))

    def _coefficients(self, plane_weights: torch.Tensor) -> torch.Tensor:
        """(..., M, bits) float64: each column's plane weights (..., M, bits) on the
        settling components."""
        return plane_weights.to(torch.float64) @ self._basis.T

    @staticmethod
    def _extra_components(base: torch.Tensor, coef: torch.Tensor, rank: int
                          ) -> torch.Tensor:
        """(..., rank - 1, N, M): the operands of the settling components after the first,
        ``base`` (..., N, M) = ``G v_read W`` times each column's coefficient ``coef``
        (..., M, bits) on the component."""
        if rank == 1:
            return base.new_zeros((*base.shape[:-2], 0, *base.shape[-2:]))
        return torch.stack([base * coef[..., None, :, k] for k in range(1, rank)], dim=-3)

    def _check_rank(self, rank: Any) -> int:
        bits = self._basis.shape[0]
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
                or not 1 <= rank <= bits:
            raise ConfigError(f"rank = {rank!r} must be a whole number in [1, {bits}]")
        return int(rank)

    def _peak(self, colsum: torch.Tensor) -> torch.Tensor:
        """Each column's largest TIA output (every input bit at 1), V, from its effective
        conductance ``colsum`` (..., M)."""
        return self.tia_gain_ohm * (self.hw.drive.v_read_v + abs(self.v_offset_v)) * colsum

    def _settling_rank(self, plane_weights: torch.Tensor, coef: torch.Tensor,
                       peak: torch.Tensor, rank: int | None) -> int:
        """The fewest settling components whose truncation moves no column's ``D`` by more
        than ``SETTLING_TOLERANCE_LSB`` (bound: every plane at the column's largest
        output ``peak``), and at least ``rank``."""
        basis = self._basis
        bits = basis.shape[0]
        least = self._check_rank(1 if rank is None else rank)
        if plane_weights.numel() == 0:
            return least
        a_cols = plane_weights.to(torch.float64)
        limit = SETTLING_TOLERANCE_LSB * self.lsb_v
        top = peak.to(torch.float64)
        for r in range(least, bits + 1):
            resid = a_cols - coef[..., :r] @ basis[:r]
            if r == bits or float(torch.amax(resid.abs().sum(-1) * top)) <= limit:
                return r
        return bits

    # -- reading ---------------------------------------------------------------------------
    def check_inputs(self, x: torch.Tensor) -> None:
        """ConfigError unless ``x`` holds whole numbers in [0, 2^input_bits - 1]."""
        top = self.input_levels - 1
        if x.numel() and (bool(torch.any(x < 0)) or bool(torch.any(x > top))
                          or bool(torch.any(x != torch.round(x)))):
            raise ConfigError(f"inputs must be whole numbers in [0, {top}] "
                              f"({self.hw.drive.input_bits}-bit), got values in "
                              f"[{float(x.min()):g}, {float(x.max()):g}]")

    def analog(self, x: torch.Tensor, tiles: PreparedTiles, *,
               generator: Draws | None = None, read_noise: bool = True,
               adc_noise: bool = True, check: bool = True) -> torch.Tensor:
        """Accumulated front-end voltage ``D`` (..., B, M) for inputs ``x`` (..., B, N).

        ``x`` holds whole numbers in [0, 2^bits - 1] (any float or integer dtype); its
        leading dimensions broadcast against the tiles'. Noise is drawn only with a
        ``generator``.
        """
        x = torch.as_tensor(x, device=self.device)
        if check:
            self.check_inputs(x)
        idx = x.to(torch.int32)
        noisy = generator is not None and read_noise and self.read_noise_s > 0
        sigma2: torch.Tensor | float = 0.0
        if tiles.all_linear and tiles.rank == 1:
            looked = self._look_up(idx, noisy)
            if noisy:
                out = torch.matmul(looked.reshape(*idx.shape[:-1], -1), tiles.w_noise)
                d = out[..., :-1] + tiles.offset_v[..., None, :]
                sigma2 = out[..., -1:]
            else:
                d = torch.matmul(looked, tiles.w_scaled) + tiles.offset_v[..., None, :]
        else:
            r = tiles.rank
            cols = list(range(r)) + [self.lut_basis.shape[1] - 1]
            looked = self.lut_basis[:, cols].index_select(0, idx.reshape(-1)).reshape(
                *idx.shape, r + 1)
            if tiles.all_linear:
                parts = torch.cat([looked[..., k] for k in range(r)], dim=-1)
                ops = torch.cat([tiles.w_scaled[..., None, :, :], tiles.w_extra], dim=-3)
                d = torch.matmul(parts, ops.flatten(-3, -2)) + tiles.offset_v[..., None, :]
            else:
                d = self._exact_planes(idx.to(torch.long), tiles)
            if noisy:
                scale = self.tia_gain_ohm * self.hw.drive.v_read_v * self.read_noise_s
                sigma2 = scale ** 2 * looked[..., r].sum(-1, keepdim=True)
        if noisy:
            sigma2 = sigma2 * tiles.noise_scale[..., None, :]
        return self._add_noise(d, sigma2, generator, noisy, adc_noise)

    def analog_columns(self, xt: torch.Tensor, weights: torch.Tensor, offset: torch.Tensor,
                       *, generator: Draws | None = None, read_noise: bool = True,
                       adc_noise: bool = True, check: bool = True) -> torch.Tensor:
        """:meth:`analog` with the input vectors along the LAST axis: ``D`` (..., M, B) for
        inputs ``xt`` (..., N, B), on the shortcut (tiles with ``all_linear`` only).

        ``weights`` (..., M + 1, R N) and ``offset`` (..., M, 2) come from
        :meth:`PreparedTiles.columns`; tiles that share their inputs may be stacked along
        M (their rows first, one noise row last). The layout of unfolded convolutions: the
        per-vector reductions and broadcasts run along contiguous memory.
        """
        return self._columns(xt, weights, offset, 1.0, 0.0, generator=generator,
                             read_noise=read_noise, adc_noise=adc_noise, check=check)

    def codes_columns(self, xt: torch.Tensor, weights: torch.Tensor, offset: torch.Tensor,
                      *, generator: Draws | None = None, read_noise: bool = True,
                      adc_noise: bool = True, check: bool = True) -> torch.Tensor:
        """The ADC codes (float, ..., M, B) of :meth:`analog_columns`' read: ``quantize``
        of it. With the ideal uniform transition levels the conversion to LSB units is folded
        into the (small) operands, so that the codes come out of the read's own tensor."""
        if not self._uniform_adc:
            return self.quantize(self.analog_columns(
                xt, weights, offset, generator=generator, read_noise=read_noise,
                adc_noise=adc_noise, check=check), dtype=weights.dtype)
        d = self._columns(xt, weights, offset, 1.0 / self.lsb_v, 0.5, generator=generator,
                          read_noise=read_noise, adc_noise=adc_noise, check=check)
        return d.floor_().clamp_(0, self.top_code)

    def pair_operands(self, tiles: PreparedTiles) -> "PairOperands | None":
        """What :meth:`pair_sums_columns` reads for a layer's tiles (tr, tc, ...), in the
        ADC's LSB: :meth:`PreparedTiles.stacked_columns` scaled, built in one pass per
        settling component; computed once per programming. None where the fused
        conversion does not apply (transition levels other than the ideal ones): convert
        the codes instead."""
        if not self._uniform_adc:
            return None
        tr, tc, n, m = tiles.w_scaled.shape
        r = tiles.rank
        scale = 1.0 / self.lsb_v
        w = tiles.w_scaled.new_empty((tr, tc, m, r * n))
        parts = [tiles.w_scaled] + [tiles.w_extra[..., k, :, :] for k in range(r - 1)]
        for k, part in enumerate(parts):
            torch.mul(part.transpose(-1, -2), scale, out=w[..., k * n:(k + 1) * n])
        noise = tiles.w_scaled.new_zeros((tr, 1, r * n))
        noise[..., :n] = tiles.noise_unit[:, :1, None]
        return PairOperands(w=w.view(tr, tc * m, r * n), noise=noise,
                            offset=(tiles.offset_v * scale + 0.5).reshape(tr, tc * m),
                            noise_scale=tiles.noise_scale.reshape(tr, tc * m))

    def pair_sums_columns(self, xt: torch.Tensor, ops: "PairOperands",
                          tile_scale: torch.Tensor, *, generator: NormalStream | None = None,
                          read_noise: bool = True, adc_noise: bool = True,
                          check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The digital sums over tile rows of the pairs' code differences, (tc P, B):
        ``sum_t tile_scale[t, c] (code[t, c, 2p] - code[t, c, 2p + 1])`` for inputs ``xt``
        (tr, N, B), the operands of :meth:`pair_operands` and ``tile_scale`` (tr, tc); and
        which vectors put a column of any tile at the ADC's top code, (B,) bool.

        The conversion runs fused (``surrogate.fused``: noise computed in place from
        ``generator``'s counters, rounding, range, differences and sums in one pass); the
        codes are :meth:`codes_columns`' with the stream's normals."""
        read = generator is not None and read_noise and self.read_noise_s > 0
        adc = generator is not None and adc_noise and self.adc_noise_v > 0
        if read and self.device.type == "cpu":
            # the lookups and the noise's sums over the inputs in one pass over them
            idx, rank = self._indices(xt, ops.w.shape[-1], check)
            luts = self._lut_columns[0][None] if rank == 1 else self.lut_basis[:, :rank].T
            looked, var = fused.look_up(idx, luts, self._lut_columns[1])
            d = torch.matmul(ops.w, looked)                             # (tr, M, B)
            var.mul_(ops.noise[:, 0, :1] * (1.0 / self.lsb_v) ** 2)
        else:
            idx, flat, looked = self._column_lookup(xt, ops.w.shape[-1], check)
            n = idx.shape[-2]
            d = torch.matmul(ops.w, looked)                             # (tr, M, B)
            if read:
                units = self._lut_columns[1].index_select(0, flat).view(idx.shape)
                var = torch.matmul(ops.noise[..., :n], units)[..., 0, :]
                var.mul_((1.0 / self.lsb_v) ** 2)
            else:
                var = d.new_zeros((d.shape[0], d.shape[-1]))
        adc2 = (self.adc_noise_v * (1.0 / self.lsb_v)) ** 2 if adc else 0.0
        noisy = read or adc
        rows = d.shape[-2] // 2
        base = generator.reserve(d.shape[0] * rows * d.shape[-1]) if noisy else 0
        key = generator.key if noisy else 0
        kernel = fused.pair_sums if d.device.type == "cpu" else fused.pair_sums_torch
        return kernel(d, ops.offset, var, ops.noise_scale, adc2, self.top_code, tile_scale,
                      key=key, base=base, n_all=d.shape[-1], b0=0, noisy=noisy)

    def _columns(self, xt: torch.Tensor, weights: torch.Tensor, offset: torch.Tensor,
                 scale: float, shift: float, *, generator: Draws | None,
                 read_noise: bool, adc_noise: bool, check: bool) -> torch.Tensor:
        """``D * scale + shift`` of :meth:`analog_columns`, noise included."""
        idx, flat, looked = self._column_lookup(xt, weights.shape[-1], check)
        noisy = generator is not None and read_noise and self.read_noise_s > 0
        m = weights.shape[-2] - 1
        n = idx.shape[-2]
        w = weights[..., :m, :] * scale if scale != 1.0 else weights[..., :m, :]
        sigma2: torch.Tensor | float = 0.0
        d = torch.matmul(w, looked)
        if noisy:
            units = self._lut_columns[1].index_select(0, flat).view(idx.shape)
            sigma2 = torch.matmul(weights[..., m:, :n], units).mul_(scale ** 2)
            sigma2 = sigma2 * offset[..., 1:2]
        offset = offset[..., :1]
        d += offset * scale + shift if (scale != 1.0 or shift) else offset
        return self._add_noise(d, sigma2, generator, noisy, adc_noise, scale)

    def _column_lookup(self, xt: torch.Tensor, width: int, check: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs ``xt`` (..., N, B) as indices, flattened, and their lookups on the
        settling components that operands ``width`` (= rank N) wide read, stacked along N:
        contiguous gathers, GEMM operands without a copy."""
        idx, rank = self._indices(xt, width, check)
        flat = idx.reshape(-1)
        if rank == 1:
            looked = self._lut_columns[0].index_select(0, flat).view(idx.shape)
        else:
            looked = torch.cat([self.lut_basis[:, k].index_select(0, flat).view(idx.shape)
                                for k in range(rank)], dim=-2)
        return idx, flat, looked

    def _indices(self, xt: torch.Tensor, width: int, check: bool) -> tuple[torch.Tensor, int]:
        """Inputs ``xt`` (..., N, B) as int32 indices (checked with ``check``), and the rank
        that operands ``width`` (= rank N) wide read them on."""
        xt = torch.as_tensor(xt, device=self.device)
        if check:
            self.check_inputs(xt)
        idx = xt.to(torch.int32)
        return idx, width // idx.shape[-2]

    def _look_up(self, idx: torch.Tensor, both: bool) -> torch.Tensor:
        """``lut2[idx]`` (idx.shape + (2,)) with ``both``, else ``lut[idx]``."""
        if both and self.dtype == torch.float32:
            # Both columns of lut2 in one 1-D gather: each row's two float32 as one float64.
            packed = self.lut2.view(torch.float64).reshape(-1)
            looked = packed.index_select(0, idx.reshape(-1)).view(torch.float32)
            return looked.reshape(*idx.shape, 2)
        lut = self.lut2 if both else self.lut2[:, 0]
        return lut.index_select(0, idx.reshape(-1)).reshape(*idx.shape, *lut.shape[1:])

    def _add_noise(self, d: torch.Tensor, sigma2: torch.Tensor | float,
                   generator: Draws | None, noisy: bool, adc_noise: bool,
                   scale: float = 1.0) -> torch.Tensor:
        """``d`` (in place) plus its read noise (variance ``sigma2``) and ADC noise draws,
        all in the units of ``scale`` V."""
        adc = generator is not None and adc_noise and self.adc_noise_v > 0
        if adc:
            sigma2 = sigma2 + (self.adc_noise_v * scale) ** 2
        if noisy or adc:
            std = torch.sqrt(torch.as_tensor(sigma2, dtype=d.dtype, device=d.device))
            if isinstance(generator, NormalStream):
                noise = generator.take(d.shape).to(d.dtype)
            else:
                noise = torch.randn(d.shape, generator=generator, dtype=d.dtype,
                                    device=d.device)
            d.addcmul_(std, noise)
        return d

    def _exact_planes(self, idx: torch.Tensor, tiles: PreparedTiles) -> torch.Tensor:
        """The eight planes one by one through the TIA's DC transfer (tiles that saturate)."""
        v_read = self.hw.drive.v_read_v
        planes = self.planes[idx]                                    # (..., B, N, bits)
        v = v_read * torch.swapaxes(planes, -1, -2) - self.v_offset_v  # (..., B, bits, N)
        # tiles (..., N, M) -> (..., 1, N, M): the inputs' B axis broadcasts against the new
        # axis and their leading axes against the tiles', as in the shortcut's matmul.
        cur = torch.matmul(v, tiles.w[..., None, :, :])              # (..., B, bits, M)
        i0, di, n = self._i_axis
        pos = torch.clamp((cur * self._i_scale - i0) / di, 0.0, n - 1.0)
        lo = torch.clamp(torch.floor(pos), max=n - 2).to(torch.long)
        frac = pos - lo
        u = self._u_table[lo] * (1 - frac) + self._u_table[lo + 1] * frac
        # each column's own plane weights, (..., M, bits) -> (..., 1, M, bits) against B
        pw = tiles.plane_weights.transpose(-1, -2)[..., None, :, :]   # (..., 1, bits, M)
        return (u * pw).sum(-2) + self.d_offset_v

    def quantize(self, d: torch.Tensor, *, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """ADC codes of accumulated voltages ``d``: the number of measured transition levels
        at or below ``d`` (closed form when they are the ideal uniform ones), as ``dtype``
        (int64 by default; a float dtype saves the conversion for digital post-processing)."""
        top = self.top_code
        if self._uniform_adc:
            codes = torch.clamp(torch.floor(d / self.lsb_v + 0.5), 0, top)
        else:
            codes = torch.searchsorted(self.transitions, d.contiguous(), right=True)
        return codes.to(dtype)

    def read(self, x: torch.Tensor, tiles: PreparedTiles, *,
             generator: Draws | None = None, read_noise: bool = True,
             adc_noise: bool = True, check: bool = True) -> TileRead:
        """One bit-serial read: accumulated voltages and codes (see :meth:`analog`)."""
        d = self.analog(x, tiles, generator=generator, read_noise=read_noise,
                        adc_noise=adc_noise, check=check)
        return TileRead(analog_v=d, codes=self.quantize(d))

    def ideal_analog(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The ideal linear crossbar's ``D = R_f v_read (x @ g) / 2^bits`` (no wires, perfect
        TIA and front-end): what the validation compares the surrogate's accuracy with."""
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        g = torch.as_tensor(g, dtype=self.dtype, device=self.device)
        hw = self.hw
        return (hw.tia.r_feedback_ohm * hw.drive.v_read_v / 2 ** hw.drive.input_bits
                * torch.matmul(x, g))
