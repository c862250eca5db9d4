"""The mixed-precision step's accumulation and write plan (``training.accumulate``): the
compiled pass against its torch reference, bit for bit, and against the procedure stated
weight by weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.accumulate import accumulate, accumulate_torch


def _case(out_f: int, in_f: int, rows: int, cols: int, levels: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tr, tc = -(-in_f // rows), -(-out_f // (cols // 2))
    w_max = torch.tensor(0.37, dtype=torch.float32)
    step = w_max / (levels - 1)
    before = torch.round(torch.rand(out_f, in_f, generator=g) * 2 * (levels - 1)
                         - (levels - 1)) * step                          # on the levels
    weight = before + torch.randn(out_f, in_f, generator=g) * 0.2        # past w_max too
    acc = torch.randn(out_f, in_f, generator=g) * 0.05
    held = torch.randint(0, levels, (tr, tc, rows, cols), generator=g).to(torch.int16)
    threshold = float(2 * w_max / 15)
    # weights whose accumulated update is the threshold exactly, in float32
    acc[0, :3] = torch.tensor(threshold, dtype=torch.float32) - (weight[0, :3] - before[0, :3])
    return weight, before, acc, held, threshold, w_max


@pytest.mark.parametrize("shape", [(11, 19, 8, 8, 16), (70, 300, 64, 64, 128),
                                   (5, 3, 8, 8, 4)])
def test_the_compiled_pass_is_its_torch_reference(shape):
    out_f, in_f, rows, cols, levels = shape
    for seed in range(4):
        weight, before, acc, held, threshold, w_max = _case(out_f, in_f, rows, cols, levels,
                                                             seed)
        results = []
        for run in (accumulate, accumulate_torch):
            w, a = weight.clone(), acc.clone()
            due = run(w, before, a, held, threshold=threshold, w_max=w_max, levels=levels)
            results.append((w, a, due))
        (w1, a1, due1), (w2, a2, due2) = results
        assert torch.equal(w1, w2) and torch.equal(a1, a2)
        assert due1 is not None and due2 is not None
        assert torch.equal(due1[0], due2[0])
        assert torch.equal(due1[1][due1[0]], due2[1][due2[0]])


def test_the_pass_is_the_procedure_weight_by_weight():
    out_f, in_f, rows, cols, levels = 11, 19, 8, 8, 16
    weight, before, acc, held, threshold, w_max = _case(out_f, in_f, rows, cols, levels, 7)
    w, a = weight.clone(), acc.clone()
    select, new = accumulate(w, before, a, held, threshold=threshold, w_max=w_max,
                             levels=levels)
    top, pairs = levels - 1, cols // 2
    f32 = np.float32
    step = f32(w_max / top)
    want_select = torch.zeros_like(select)
    due_count = 0
    for o in range(out_f):
        for i in range(in_f):
            old = f32(before[o, i])
            total = f32(acc[o, i]) + (f32(weight[o, i]) - old)
            place = (i // rows, o // pairs, i % rows)
            if abs(total) < f32(threshold):
                assert float(a[o, i]) == total and float(w[o, i]) == old
                continue
            due_count += 1
            target = min(max(old + total, -f32(w_max)), f32(w_max))
            k = min(max(np.rint(target / step), -top), top)
            assert float(a[o, i]) == 0.0 and float(w[o, i]) == f32(k * step)
            for j, level in ((2 * (o % pairs), max(k, 0)), (2 * (o % pairs) + 1, max(-k, 0))):
                if level != int(held[(*place, j)]):
                    want_select[(*place, j)] = True
                    assert int(new[(*place, j)]) == level
    assert torch.equal(select, want_select)
    total = acc[0, :3] + (weight[0, :3] - before[0, :3])
    assert torch.equal(total, torch.full((3,), threshold))      # on the threshold: due
    assert torch.equal(a[0, :3], torch.zeros(3)) and due_count > 3


def test_nothing_due_plans_nothing():
    weight, before, acc, held, threshold, w_max = _case(11, 19, 8, 8, 16, 3)
    for run in (accumulate, accumulate_torch):
        w, a = before + 1e-4, torch.zeros_like(acc)
        assert run(w, before, a, held, threshold=threshold, w_max=w_max, levels=16) is None
        assert torch.equal(w, before) and torch.allclose(a, torch.full_like(a, 1e-4),
                                                         atol=1e-6)
