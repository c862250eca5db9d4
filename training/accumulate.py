"""The mixed-precision step of one analog layer: accumulation, the threshold and the write
plan in one pass over its weights.

After the wrapped optimizer has updated ``weight`` (out, in) from ``before``, each weight's
update goes to its accumulator; where the accumulated magnitude reaches the threshold, the
weight's new target ``clamp(before + acc, -w_max, w_max)`` is quantized to the devices'
levels (``k = clamp(round(target / step), -top, top)``, halves to even), the weight becomes
``k step`` and its accumulator is cleared, and each device of its pair whose target level
(``max(k, 0)`` for the first, ``max(-k, 0)`` for the second) differs from the one it holds
is selected for writing. Elsewhere the weight goes back to ``before``.

:func:`accumulate` is that pass compiled (CPU tensors; every output row on its own core);
:func:`accumulate_torch` is the same arithmetic in torch, one whole-tensor operation at a
time (any device; the reference the tests hold the kernel to, bit for bit). Both give the
devices to write as a mask and their levels in the layer's tile layout (tile rows, tile
columns, R, C): weight ``(o, i)`` on tile ``(i // R, o // P)``, row ``i % R``, columns
``2 (o % P)`` and ``2 (o % P) + 1``, ``P = C / 2``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from training.analog import pair_levels, to_tiles

__all__ = ["accumulate", "accumulate_torch"]


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _accumulate(weight, before, acc, held, thr, w_max, step, top, select,
                levels):  # noqa: ANN001 - numba kernel
    out, inp = weight.shape
    rows = held.shape[2]
    pairs = held.shape[3] // 2
    zero = np.float32(0.0)
    count = 0
    for o in numba.prange(out):
        c = o // pairs
        j0 = 2 * (o % pairs)
        j1 = j0 + 1
        for i in range(inp):
            old = before[o, i]
            a = acc[o, i] + (weight[o, i] - old)
            if abs(a) < thr:
                acc[o, i] = a
                weight[o, i] = old
                continue
            v = old + a
            v = -w_max if v < -w_max else (w_max if v > w_max else v)
            k = np.rint(v / step)
            k = -top if k < -top else (top if k > top else k)
            weight[o, i] = k * step
            acc[o, i] = zero
            t = i // rows
            r = i % rows
            kp = np.int16(k) if k > zero else np.int16(0)
            kn = np.int16(-k) if k < zero else np.int16(0)
            if kp != held[t, c, r, j0]:
                select[t, c, r, j0] = 1
                levels[t, c, r, j0] = kp
                count += 1
            if kn != held[t, c, r, j1]:
                select[t, c, r, j1] = 1
                levels[t, c, r, j1] = kn
                count += 1
    return count


def accumulate(weight: torch.Tensor, before: torch.Tensor, acc: torch.Tensor,
               held: torch.Tensor, *, threshold: float, w_max: torch.Tensor, levels: int
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The module docstring's pass, compiled, in place on ``weight`` and ``acc`` (float32,
    contiguous CPU tensors): ``held`` the devices' target levels (int16, tile layout),
    ``threshold`` the accumulated magnitude that writes (the weights' units), ``w_max`` the
    layer's 0-d float32 range, ``levels`` per device. Returns the mask of devices to write
    (bool, tile layout) and their levels (int16, valid under the mask), or None when no
    device is to be written."""
    top = levels - 1
    select = torch.zeros(held.shape, dtype=torch.uint8)
    new = torch.empty(held.shape, dtype=torch.int16)
    f32 = np.float32
    step = (w_max / top).numpy()
    count = _accumulate(weight.detach().numpy(), before.numpy(), acc.numpy(), held.numpy(),
                        f32(threshold), f32(w_max.numpy()), f32(step), f32(top),
                        select.numpy(), new.numpy())
    if not count:
        return None
    return select.view(torch.bool), new


def accumulate_torch(weight: torch.Tensor, before: torch.Tensor, acc: torch.Tensor,
                     held: torch.Tensor, *, threshold: float, w_max: torch.Tensor,
                     levels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`accumulate` in torch (any device), the same results."""
    top = levels - 1
    acc.add_(weight.detach() - before)
    due = acc.abs() >= threshold
    weight.data.copy_(before)
    if not bool(due.any()):
        return None
    step = w_max / top
    target = torch.clamp(before + acc, -w_max, w_max)
    k = torch.clamp(torch.round(target / step), -top, top)
    weight.data.copy_(torch.where(due, k * step, before))
    acc[due] = 0.0
    new = pair_levels(to_tiles(k, held.shape).to(torch.int16))
    sel = to_tiles(due, held.shape, False).repeat_interleave(2, dim=-1)
    select = sel & (new != held)
    if not bool(select.any()):
        return None
    return select, new
