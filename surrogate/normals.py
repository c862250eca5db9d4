"""Counter-based standard normals: the value at each position is a pure function of a key
and the position, computed where it is used.

A simulated analog forward needs one Gaussian per ADC conversion: a VGG-8 training step at
batch 64 converts about 1.2 G times. A generator with a state (torch's Mersenne Twister)
draws them one after the other on one core; a counter-based one computes each from its
position, on every core, in the vector units, inside the kernel that adds it to the read,
never stored (``surrogate.fused``). Same idea as Philox in cuRAND and JAX's threefry.

The generator
-------------
Position ``c`` (a 64-bit counter) of key ``k`` gives 64 random bits ``h = mix(k + c *
GAMMA)`` with SplitMix64's finalizer ``mix`` and increment ``GAMMA`` (Steele, Lea and
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; the sequence passes
BigCrush). The two 32-bit halves of ``h`` make TWO standard normals by the Box-Muller
transform (Box and Muller, Ann. Math. Stat. 29, 1958)::

    u = (lo + 1/2) / 2^32                 in (0, 1), never 0 or 1
    theta = 2 pi (hi + 1/2) / 2^32        (quadrant: the top two bits of hi)
    z0, z1 = sqrt(-2 ln u) (cos theta, sin theta)

so normal ``2c`` is ``z0`` and normal ``2c + 1`` is ``z1``. The logarithm, sine and cosine
are evaluated in float64 by series that the vector units can run (no library call):
``ln`` by ``2 atanh((m - 1)/(m + 1))`` on the mantissa ``m`` in [sqrt(1/2), sqrt(2)) (7
terms; truncation below 1e-12), sine and cosine by Taylor polynomials on [-pi/4, pi/4)
(7 terms; truncation below 1e-11) rotated by the quadrant. The normals are exact to
float32 rounding; their largest magnitude is ``sqrt(64 ln 2) = 6.66``, at probability
2^-32 per pair (torch's float32 ``randn``, with 24-bit uniforms, stops at 5.8).

Two implementations give the same values: the compiled kernels here (numba, CPU, all
cores) and :func:`normals_torch` (torch, any device: the CUDA path and the reference the
tests hold the kernels to).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from surrogate.series import bits_of, float_of, horner, series

__all__ = ["GAMMA", "key_for", "normals", "normals_torch", "uniform_pair_normals"]

#: SplitMix64's increment (the odd integer nearest 2^64 / golden ratio) and finalizer
#: multipliers.
GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1

_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_QUARTER_PI = math.pi / 4
# atanh series: ln m = 2 s (1 + s^2/3 + s^4/5 + ...), s = (m - 1)/(m + 1)
_LN_TERMS = tuple(1.0 / (2 * k + 1) for k in range(7))
# Taylor coefficients of sin x / x and cos x in powers of x^2
_SIN_TERMS = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(7))
_COS_TERMS = tuple((-1) ** k / math.factorial(2 * k) for k in range(7))


def _mix_int(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def key_for(seed: int, stream: int = 0) -> int:
    """The 64-bit key of ``seed`` (any integer) and a ``stream`` number (streams of one seed
    are independent): two rounds of the finalizer, so that nearby seeds give unrelated
    keys."""
    return _mix_int(_mix_int(int(seed) & _MASK64) + (int(stream) & _MASK64) * GAMMA)


# -- the compiled kernels (numba) -------------------------------------------------------------

_U = np.uint64
_G, _M1, _M2 = _U(GAMMA), _U(_MIX1), _U(_MIX2)
_LO32 = _U(0xFFFFFFFF)
_MANT = _U((1 << 52) - 1)
_ONE_EXP = _U(1023 << 52)


@numba.njit(inline="always", cache=True, error_model="numpy")
def mix(z):  # noqa: ANN001, ANN201 - numba kernel
    """SplitMix64's finalizer."""
    z = (z ^ (z >> _U(30))) * _M1
    z = (z ^ (z >> _U(27))) * _M2
    return z ^ (z >> _U(31))


@numba.njit(inline="always", cache=True, error_model="numpy")
def uniform_pair_normals(h):  # noqa: ANN001, ANN201
    """The two standard normals (float64) of 64 random bits ``h`` (module docstring)."""
    lo = h & _LO32
    hi = h >> _U(32)
    # -ln u with u = (2 lo + 1) / 2^33: ln of the odd integer from its exponent and mantissa
    bits = bits_of(np.float64(_U(2) * lo + _U(1)))
    e = np.float64(np.int64(bits >> _U(52)) - 1023)
    m = float_of((bits & _MANT) | _ONE_EXP)                    # in [1, 2)
    big = m > 1.4142135623730951
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)
    p = series(_LN_TERMS, s * s)
    r = math.sqrt(2.0 * ((33.0 - e) * _LN2 - 2.0 * s * p))
    # the angle: quadrant from the top two bits, the rest uniform on [-pi/4, pi/4)
    q = hi >> _U(30)
    x = (np.float64(hi & _U((1 << 30) - 1)) + 0.5) * (_QUARTER_PI / (1 << 29)) - _QUARTER_PI
    x2 = x * x
    sn = series(_SIN_TERMS, x2) * x
    cs = series(_COS_TERMS, x2)
    # rotate by pi/4, then by the quadrant
    c = (cs - sn) * _SQRT_HALF
    sv = (sn + cs) * _SQRT_HALF
    odd = (q & _U(1)) != _U(0)
    c, sv = (-sv, c) if odd else (c, sv)
    neg = (q & _U(2)) != _U(0)
    c, sv = (-c, -sv) if neg else (c, sv)
    return r * c, r * sv


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _fill(first, second, key, start):  # noqa: ANN001
    """``first[i], second[i]`` <- the two normals of counter ``start + i`` (float32)."""
    pairs = first.size
    per = 4096
    for blk in numba.prange((pairs + per - 1) // per):
        for i in range(blk * per, min(pairs, (blk + 1) * per)):
            z0, z1 = uniform_pair_normals(mix(key + (start + _U(i)) * _G))
            first[i] = np.float32(z0)
            second[i] = np.float32(z1)


def normals(key: int, start: int, pairs: int) -> np.ndarray:
    """The normals of counters ``start .. start + pairs - 1`` of ``key`` (float32, on the
    CPU's cores), ``2 pairs`` of them: first every counter's first normal, then every
    counter's second."""
    out = np.empty(2 * pairs, dtype=np.float32)
    if pairs:
        _fill(out[:pairs], out[pairs:], _U(key & _MASK64), _U(start & _MASK64))
    return out


# -- the torch reference (any device) -----------------------------------------------------------

def _signed(v: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def normals_torch(key: int, counters: torch.Tensor) -> torch.Tensor:
    """The two normals of each counter (int64 tensor, any shape and device), float32, shape
    ``(2,) + counters.shape``: the same values as the compiled kernels (in the same
    float64 arithmetic, rounded once)."""
    z = counters.to(torch.int64) * _signed(GAMMA) + _signed(key)   # wraps like uint64
    z = (z ^ _shr(z, 30)) * _signed(_MIX1)
    z = (z ^ _shr(z, 27)) * _signed(_MIX2)
    z = z ^ _shr(z, 31)
    lo = z & 0xFFFFFFFF
    hi = _shr(z, 32)
    bits = (2 * lo + 1).to(torch.float64).view(torch.int64)
    e = (_shr(bits, 52) - 1023).to(torch.float64)
    m = ((bits & ((1 << 52) - 1)) | (1023 << 52)).view(torch.float64)
    big = m > 1.4142135623730951
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1.0, e)
    s = (m - 1.0) / (m + 1.0)
    p = horner(_LN_TERMS, s * s)
    r = torch.sqrt(2.0 * ((33.0 - e) * _LN2 - 2.0 * s * p))
    q = _shr(hi, 30)
    x = ((hi & ((1 << 30) - 1)).to(torch.float64) + 0.5) * (_QUARTER_PI / (1 << 29)) \
        - _QUARTER_PI
    x2 = x * x
    sn = horner(_SIN_TERMS, x2) * x
    cs = horner(_COS_TERMS, x2)
    c = (cs - sn) * _SQRT_HALF
    sv = (sn + cs) * _SQRT_HALF
    odd = (q & 1) != 0
    c, sv = torch.where(odd, -sv, c), torch.where(odd, c, sv)
    neg = (q & 2) != 0
    c, sv = torch.where(neg, -c, c), torch.where(neg, -sv, sv)
    return torch.stack([r * c, r * sv]).to(torch.float32)
