"""Elementary functions in plain float64 arithmetic, the same numbers compiled and in torch.

A library's ``exp`` or ``log`` is accurate to about an ulp but not the same function
everywhere: numpy, torch's vectorized kernels, the C library that a numba kernel calls and
CUDA each round differently in the last bit. A compiled kernel that must give its torch
reference's results bit for bit therefore evaluates them itself, with additions,
multiplications, divisions and exact scalings by powers of two, which IEEE 754 rounds the
same on every machine. Each function here has a torch form (any device; the reference and
the CUDA path) and a numba form (inlined in the kernels) written from the same constants.

* :func:`horner` evaluates a polynomial; ``series`` is its compiled form.
* :func:`exp_torch` and ``exp64`` compute ``exp(x)`` for ``x`` clamped to ``[-EXP_LIMIT,
  EXP_LIMIT]`` (outside it a pulse's response is 1e-304 or 1e304: nothing a device can
  do): Cody and Waite's reduction ``x = k ln 2 + r``, ``|r| <= ln 2 / 2``, with ``ln 2`` in
  two parts (fdlibm's), then the Taylor polynomial of degree 13 (truncation below 4e-18
  relative) times ``2^k`` built from its bits. Within 2 ulps of the correctly rounded
  value (tested).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["EXP_LIMIT", "bits_of", "exp64", "exp_torch", "float_of", "horner", "series"]

#: |x| beyond which exp's argument is clamped.
EXP_LIMIT = 700.0
_INV_LN2 = 1.0 / math.log(2.0)
# ln 2 = _LN2_HI + _LN2_LO; _LN2_HI has its low 32 bits zero, so k * _LN2_HI is exact
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_EXP_TERMS = tuple(1.0 / math.factorial(k) for k in range(14))


@intrinsic
def bits_of(typingctx, x):  # noqa: ANN001 - numba's intrinsic signature
    """The bits of a float64 as a uint64 (no conversion)."""
    sig = types.uint64(types.float64)

    def codegen(context, builder, signature, args):  # noqa: ANN001
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def float_of(typingctx, x):  # noqa: ANN001
    """The float64 whose bits are the uint64 ``x``."""
    sig = types.float64(types.uint64)

    def codegen(context, builder, signature, args):  # noqa: ANN001
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


def horner(terms, x):  # noqa: ANN001, ANN201 - floats, arrays or tensors
    """``sum_k terms[k] x^k`` by Horner's rule; the kernels' and the torch path's one
    source (compiled as ``series``, the constant tuple unrolled)."""
    p = terms[-1]
    for k in range(len(terms) - 2, -1, -1):
        p = p * x + terms[k]
    return p


series = numba.njit(inline="always", cache=True, error_model="numpy")(horner)


@numba.njit(inline="always", cache=True, error_model="numpy")
def exp64(x):  # noqa: ANN001, ANN201 - numba kernel
    """``exp(x)`` of a float64 (module docstring)."""
    x = -EXP_LIMIT if x < -EXP_LIMIT else (EXP_LIMIT if x > EXP_LIMIT else x)
    k = np.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    return series(_EXP_TERMS, r) * float_of(np.uint64(np.int64(k) + 1023) << np.uint64(52))


def exp_torch(x: torch.Tensor) -> torch.Tensor:
    """``exp64`` in torch: float64 of ``x`` (any dtype and device) in, float64 out."""
    x = x.to(torch.float64).clamp(-EXP_LIMIT, EXP_LIMIT)
    k = torch.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    return horner(_EXP_TERMS, r) * ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
