"""Analog layers, the mixed-precision optimizer and the training/evaluation runs.

Everything runs on the ``tiny`` calibration (8x8 tiles), so that layers spread over many
tiles and the tile bookkeeping is exercised; data are small synthetic MNIST-format files
written here (never downloaded).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from calibration.store import open_table
from netlists.config import SurrogateConfig
from netlists.errors import ConfigError
from training.analog import (AnalogChip, AnalogConv2d, AnalogLinear, analog_layers,
                             from_digital)
from surrogate.normal_stream import NormalStream
from training.models import build_model
from training.optim import MixedPrecisionOptimizer
from training.trainer import TrainConfig, TrainingError, evaluate, load_checkpoint, train

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def table(tiny_calibration):
    return open_table(tiny_calibration)


def _chip(table, **kw) -> AnalogChip:
    kw.setdefault("read_noise", False)
    return AnalogChip(table, seed=kw.pop("seed", 3), **kw)


# -- mapping and the analog forward --------------------------------------------------------
def test_weights_map_onto_tile_pairs_and_back(table):
    chip = _chip(table)
    w = torch.randn(11, 19) * 0.3
    layer = AnalogLinear(19, 11, chip=chip, weight=w).tiles
    assert layer.grid == (3, 3)                           # 19 rows over 8, 11 outputs over 4
    q = layer.quantize(w)
    step = float(layer.w_max) / (chip.levels - 1)
    assert torch.allclose(q / step, torch.round(q / step), atol=1e-4)
    assert torch.equal(layer._from_tiles(layer._to_tiles(q)), q)
    levels = layer.target_levels(q)
    pos, neg = layer._from_tiles(levels[..., 0::2].float()), layer._from_tiles(
        levels[..., 1::2].float())
    assert torch.all((pos == 0) | (neg == 0))             # one device of a pair at the floor
    assert torch.allclose((pos - neg) * step, q, atol=1e-5)
    assert torch.equal(layer.weight.detach(), q)          # the weights are what was written


def test_analog_linear_follows_the_digital_product(table):
    chip = _chip(table)
    torch.manual_seed(0)
    ref = nn.Linear(30, 6, bias=True)
    layer = AnalogLinear.from_linear(ref, chip)
    w = layer.tiles.weight.detach()
    tiles = layer.tiles
    for passes, x in ((1, torch.rand(64, 30)), (2, torch.randn(64, 30))):  # signed: 2 reads
        y = layer(x).detach()
        exact = x @ w.T + ref.bias.detach()
        # One ADC code of a pair's difference, in output units, for each input vector: each
        # tile's partial sum is within about a code (rounding of both codes, IR drop and the
        # front-end's gain on an 8x8 tile are far below), summed over the tile rows.
        scale = x.abs().amax(dim=1, keepdim=True)
        code = chip.code_to_dot * float(tiles.w_max) * scale
        bound = tiles.grid[0] * passes * 1.0 * code
        assert torch.all((y - exact).abs() <= bound), float(((y - exact).abs() / code).max())
        assert torch.corrcoef(torch.stack([y.ravel(), exact.ravel()]))[0, 1] > 0.98


def test_straight_through_gradients(table):
    chip = _chip(table)
    layer = AnalogLinear(12, 5, chip=chip)
    x = torch.rand(7, 12, requires_grad=True)
    c = torch.randn(7, 5)
    (layer(x) * c).sum().backward()
    w = layer.tiles.weight.detach()
    assert torch.allclose(layer.tiles.weight.grad, c.T @ x.detach(), atol=1e-5)
    assert torch.allclose(x.grad, c @ w, atol=1e-5)
    assert layer.tiles.tile_scale.grad is not None and layer.bias.grad is not None


def _tile_by_tile(tiles, x: torch.Tensor) -> torch.Tensor:
    """The layer's analog result computed tile after tile through ``TileSurrogate.read``
    (the validated read, vectors first), independently of the layer's batched read."""
    chip, reader = tiles.chip, tiles.chip.reader
    top = reader.input_levels - 1
    full = reader.prepare(tiles.conductances())
    peak = x.abs().amax(dim=1, keepdim=True)
    scale = top / peak.clamp_min(1e-30)
    r, scales = chip.rows, tiles.tile_scale.detach()
    y = torch.zeros(x.shape[0], tiles.grid[1] * chip.pairs, dtype=torch.float64)
    for t in range(tiles.grid[0]):
        part = torch.zeros(x.shape[0], r)
        block = x[:, t * r:(t + 1) * r]
        part[:, :block.shape[1]] = block
        for k in range(tiles.grid[1]):
            one = type(full)(*(getattr(full, f.name)[t, k] for f in fields(full)))
            total = 0
            for sign in (1, -1):
                q = torch.floor(torch.clamp(sign * part * scale, min=0) + 0.5)
                codes = reader.read(q, one).codes.double()
                total = total + sign * (codes[:, 0::2] - codes[:, 1::2])
            y[:, k * chip.pairs:(k + 1) * chip.pairs] += total * float(scales[t, k])
    unit = chip.code_to_dot * float(tiles.w_max)
    return (y[:, :tiles.out_features] * peak.double() * unit).float()


def test_the_batched_read_is_the_tile_by_tile_read(table):
    chip = _chip(table)
    torch.manual_seed(4)
    tiles = AnalogLinear(19, 11, chip=chip).tiles                # 3 x 3 tiles of 8 x 8
    with torch.no_grad():
        tiles.tile_scale.copy_(torch.linspace(0.6, 1.4, 9).view(3, 3))
    x = torch.randn(40, 19)
    x[3] = 0.0                                                    # a vector with no input
    x[5, :8] = 0.0                                                # none on one tile row
    x[7] = x[7].abs()
    got = tiles.analog(x)
    want = _tile_by_tile(tiles, x)
    assert torch.equal(got[3], torch.zeros(11))
    unit = chip.code_to_dot * float(tiles.w_max) * x.abs().amax(dim=1, keepdim=True)
    unit = unit.clamp_min(1e-9)
    err = ((got - want) / unit).abs()
    # the same codes, but where a D lies within rounding of a transition level
    assert float(err.max()) <= 3 * 1.4 + 1e-3 and int((err > 1e-3).sum()) <= 2
    # mostly zero inputs take the compacted read: the same results
    sparse = torch.zeros(40, 19)
    sparse[::9] = x[::9]
    err = ((tiles.analog(sparse) - _tile_by_tile(tiles, sparse)) / unit).abs()
    assert int((err > 1e-3).sum()) <= 2 and torch.equal(tiles.analog(sparse)[1], torch.zeros(11))



def test_the_unfused_conversion_reads_as_the_fused_one(table):
    """Transition levels other than the ideal ones take the codes' conversion instead of the
    fused one: the same reads but within rounding of a transition level."""
    chip = _chip(table)
    torch.manual_seed(4)
    tiles = AnalogLinear(19, 11, chip=chip).tiles
    x = torch.randn(40, 19)
    fused = tiles.analog(x)
    assert tiles._operands[0] == "pairs"
    chip.reader._uniform_adc = False               # as a table with measured levels reads
    tiles._forget_tiles()
    unfused = tiles.analog(x)
    assert tiles._operands[0] == "columns"
    unit = chip.code_to_dot * float(tiles.w_max) * x.abs().amax(dim=1, keepdim=True)
    assert int(((unfused - fused) / unit).abs().gt(1e-3).sum()) <= 2

def _narrow_chip(table, rereads: int, **kw) -> AnalogChip:
    """A chip whose converter stops at code 20 (of the same LSB): eight top cells driven at
    full scale reach about 42."""
    chip = _chip(table, config=SurrogateConfig(saturation_rereads=rereads), **kw)
    chip.reader.top_code = 20
    return chip


def _top_layer(chip: AnalogChip) -> AnalogLinear:
    w = torch.full((4, 16), 0.5)
    w[1], w[2], w[3, ::2] = -0.5, 0.0, 0.5
    return AnalogLinear(16, 4, chip=chip, weight=w)


@pytest.mark.parametrize("unfused", [False, True])
def test_saturated_reads_are_read_again_at_half_the_input(table, unfused):
    x = torch.ones(3, 16)                          # every row at full scale: saturates
    x[1] = 0.25                                    # a quarter of it: does not
    x[1, 0] = 1.0
    x[2] = torch.linspace(0, 1, 16)                # half on average: saturates once
    got, counts = {}, {}
    for rereads in (0, 1, 3):
        chip = _narrow_chip(table, rereads)
        if unfused:
            chip.reader._uniform_adc = False       # the codes' conversion flags them too
            chip.reader.transitions = chip.reader.transitions[:20]
        layer = _top_layer(chip)
        got[rereads] = layer.tiles.analog(x)
        assert layer.tiles._operands[0] == ("columns" if unfused else "pairs")
        counts[rereads] = dict(chip.reads)
    exact = x @ layer.tiles.weight.detach().T
    code = chip.code_to_dot * float(layer.tiles.w_max)      # one code, peak 1
    assert counts[0] == {"vectors": 3, "saturated": 2, "reread": 0, "clipped": 2}
    clipped = (got[0][0] - exact[0])[[0, 1, 3]]                 # the outputs of nonzero w
    assert float(clipped.abs().min()) > 40 * code                    # clipped at code 20
    assert counts[1] == {"vectors": 3, "saturated": 2, "reread": 2, "clipped": 1}
    assert counts[3] == {"vectors": 3, "saturated": 2, "reread": 3, "clipped": 0}
    # read again at half the input (one input bit less), the result doubled: a few codes
    # of the halved read off, where the clipped one was off by tens
    assert float((got[3] - exact).abs().max()) <= 2 * 2 * code
    assert float((got[1][2] - exact[2]).abs().max()) <= 2 * 2 * code
    for k in (1, 3):                               # the vector that fits is read once
        assert torch.equal(got[k][1], got[0][1])


def test_reads_that_fit_the_converter_are_not_read_again(table):
    torch.manual_seed(8)
    x = torch.rand(50, 19)
    out = []
    for rereads in (0, 3):
        chip = _chip(table, read_noise=True, config=SurrogateConfig(saturation_rereads=rereads))
        torch.manual_seed(8)
        layer = AnalogLinear(19, 11, chip=chip)
        out.append(layer.tiles.analog(x))
        assert chip.reads == {"vectors": 50, "saturated": 0, "reread": 0, "clipped": 0}
    assert torch.equal(out[0], out[1])             # the same noise stream, the same codes
    with pytest.raises(ConfigError, match="saturation_rereads"):
        SurrogateConfig(saturation_rereads=9)


def _chunked(table, block: int, **kw) -> AnalogChip:
    chip = _chip(table, **kw)
    chip.noise = NormalStream(77)
    chip.chunk_reads = block
    return chip


def test_a_read_in_chunks_is_the_read_in_one(table):
    # 3 x 3 tiles of 8 columns, signed inputs: 144 reads a vector, so chunks of 1024
    # reads take 7 vectors each; without noise the chunks change nothing, bit for bit
    torch.manual_seed(4)
    layers = {}
    for block in (1024, 1 << 20):
        chip = _chunked(table, block)
        torch.manual_seed(4)
        layers[block] = AnalogLinear(19, 11, chip=chip).tiles
    x = torch.randn(40, 19)
    x[3] = 0.0
    x[:20:3] = x[:20:3].abs()
    assert torch.equal(layers[1024].analog(x), layers[1 << 20].analog(x))
    patches = torch.randn(19, 333).abs()                      # non-negative: 72 a vector
    assert torch.equal(layers[1024].analog_columns(patches),
                       layers[1 << 20].analog_columns(patches))


def test_chunked_reads_draw_independent_noise_of_the_same_spread(table):
    # one vector read 3000 times: in chunks of 14 (72 reads a vector, 1024 a chunk) and in one
    # call, the noise of each output has the same spread, and consecutive chunks share no
    # draws
    spread = {}
    for block in (1024, 1 << 22):
        chip = _chunked(table, block, read_noise=True)
        torch.manual_seed(4)
        tiles = AnalogLinear(19, 11, chip=chip).tiles
        x = torch.randn(19).abs().expand(3000, 19).T.contiguous()
        y = tiles.analog_columns(x)                                # (11, 3000)
        noise = y - y.mean(dim=1, keepdim=True)
        spread[block] = noise.std(dim=1)
        if block == 1024:
            assert not torch.equal(noise[:, 0:14], noise[:, 14:28])
            lag = torch.corrcoef(torch.stack([noise[:, :-14].reshape(-1),
                                              noise[:, 14:].reshape(-1)]))[0, 1]
            assert abs(float(lag)) < 0.05
    assert float(spread[1024].min()) > 0
    # the std of a std from 3000 samples is ~1.3 %: 10 % is far outside
    ratio = spread[1024] / spread[1 << 22]
    assert float((ratio - 1).abs().max()) < 0.1, ratio


def test_writes_prepare_again_only_the_tiles_they_touch(table):
    chip = _chip(table)
    torch.manual_seed(5)
    tiles = AnalogLinear(19, 11, chip=chip).tiles
    tiles.analog(torch.rand(4, 19))                               # prepared in full
    before = tiles._prepared.w.clone()
    w = tiles.weight.detach().clone()
    w[0, 0] += 0.3 * float(tiles.w_max)                           # tile (0, 0) only
    pairs = torch.zeros_like(w, dtype=torch.bool)
    pairs[0, 0] = True
    assert tiles.program(w, pairs=pairs).devices >= 1
    fresh = chip.reader.prepare(tiles.conductances())
    kept = tiles._prepared
    for f in fields(fresh):
        assert torch.allclose(getattr(kept, f.name).float(), getattr(fresh, f.name).float(),
                              rtol=1e-6, atol=0), f.name
    assert not torch.equal(kept.w[0, 0], before[0, 0])
    assert torch.equal(kept.w[1:], before[1:]) and torch.equal(kept.w[0, 1:], before[0, 1:])


@pytest.mark.parametrize("geometry", [dict(), dict(stride=2, padding=1),
                                      dict(stride=(1, 2), padding=(2, 1), dilation=2)])
def test_conv_reads_every_patch_and_differentiates_the_digital_conv(table, geometry):
    chip = _chip(table)
    torch.manual_seed(6)
    conv = AnalogConv2d(3, 5, 3, chip=chip, **geometry)
    ref = nn.Conv2d(3, 5, 3, **geometry)
    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    cols = nn.functional.unfold(x.detach(), 3, dilation=ref.dilation, padding=ref.padding,
                                stride=ref.stride)                   # (B, CKK, L)
    assert torch.equal(conv.patches(x.detach()), cols.permute(1, 0, 2).reshape(27, -1))
    y = conv(x)
    b, _, oh, ow = y.shape
    assert (oh, ow) == ref(x).shape[2:]
    flat = conv.tiles.analog(cols.transpose(1, 2).reshape(-1, 27))
    assert torch.equal(y.detach() - conv.bias.detach()[:, None, None],
                       flat.view(b, oh * ow, 5).transpose(1, 2).reshape(y.shape))
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    w = conv.tiles.effective_weight().detach().view(5, 3, 3, 3).requires_grad_()
    xd = x.detach().requires_grad_()
    (nn.functional.conv2d(xd, w, None, ref.stride, ref.padding, ref.dilation) * grad
     ).sum().backward()
    assert torch.allclose(x.grad, xd.grad, atol=1e-5)
    assert torch.allclose(conv.tiles.weight.grad.view(5, 3, 3, 3), w.grad, atol=1e-4)
    assert conv.tiles.tile_scale.grad is not None
    assert torch.allclose(conv.bias.grad, grad.sum((0, 2, 3)), atol=1e-5)


def test_from_digital_converts_lenet_and_keeps_its_function(table):
    chip = _chip(table)
    torch.manual_seed(1)
    model = build_model("lenet")
    x = torch.rand(16, 1, 28, 28)
    digital = model(x).detach()
    from_digital(model, chip)
    kinds = {type(m) for m in model.modules()}
    assert AnalogConv2d in kinds and AnalogLinear in kinds
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert [name for name, _ in analog_layers(model)] == [
        "features.0.tiles", "features.3.tiles", "classifier.1.tiles"]
    analog = model(x).detach()
    assert analog.shape == digital.shape
    assert torch.corrcoef(torch.stack([analog.ravel(), digital.ravel()]))[0, 1] > 0.95
    assert all(int(layer.write_count.sum()) == 0 for _, layer in analog_layers(model))


def test_reads_are_seeded(table):
    outs = []
    for seed in (5, 5, 6):
        chip = _chip(table, seed=seed, read_noise=True)
        torch.manual_seed(0)
        layer = AnalogLinear(16, 4, chip=chip)
        outs.append(layer(torch.rand(8, 16, generator=torch.Generator().manual_seed(1))))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_a_copied_model_reads_as_the_original(table):
    chip = _chip(table, read_noise=True)
    torch.manual_seed(0)
    model = nn.Sequential(AnalogLinear(16, 4, chip=chip), nn.ReLU(),
                          AnalogLinear(4, 2, chip=chip))
    x = torch.rand(8, 16)
    model(x)
    twin = copy.deepcopy(model)
    assert torch.equal(model(x), twin(x))        # the same draws from here on, separately


# -- the optimizer ---------------------------------------------------------------------------
def _layer_and_opt(table, mode: str, lr: float, **kw):
    chip = _chip(table)
    torch.manual_seed(2)
    model = nn.Sequential(AnalogLinear(16, 6, chip=chip))
    opt = MixedPrecisionOptimizer(model, torch.optim.SGD(model.parameters(), lr=lr),
                                  mode=mode, **kw)
    return model, opt, model[0].tiles


def _step(model, opt, seed=0):
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()


def test_mixed_writes_nothing_below_the_threshold(table):
    model, opt, tiles = _layer_and_opt(table, "mixed", lr=1e-7)
    before = tiles.weight.detach().clone()
    state = tiles.state.clone()
    _step(model, opt)
    assert opt.step_writes == 0 and int(tiles.write_count.sum()) == 0
    assert torch.equal(tiles.weight.detach(), before) and torch.equal(tiles.state, state)
    acc = opt.accumulators["0.tiles"]
    assert float(acc.abs().max()) > 0                    # the update waits in the accumulator


def test_mixed_writes_where_the_accumulator_crosses_and_clears_it(table):
    model, opt, tiles = _layer_and_opt(table, "mixed", lr=0.05)
    old = tiles.weight.detach().clone()
    _step(model, opt)
    acc = opt.accumulators["0.tiles"]
    written = tiles.weight.detach() != old
    assert opt.step_writes > 0 and bool(written.any())
    assert float(acc[written].abs().max()) == 0.0        # cleared where written
    thr = opt.threshold * 2 * float(tiles.w_max)
    assert float(acc.abs().max()) < thr                  # nothing due is left pending
    devices = tiles.weight_device_writes()
    assert int(devices.sum()) == opt.step_writes == int(tiles.write_count.sum())
    assert int(tiles.pulse_count.sum()) == opt.step_pulses > 0
    assert torch.all(devices[~written] == 0)


def test_naive_rewrites_every_device_every_step_and_loses_small_updates(table):
    model, opt, tiles = _layer_and_opt(table, "naive", lr=1e-6)
    old = tiles.weight.detach().clone()
    _step(model, opt)
    _step(model, opt, seed=1)
    assert opt.step_writes == 2 * tiles.weight.numel()
    assert torch.all(tiles.weight_device_writes() == 2)
    assert torch.equal(tiles.weight.detach(), old)       # sub-level updates are lost


def test_digital_parameters_are_updated_directly(table):
    model, opt, tiles = _layer_and_opt(table, "mixed", lr=1e-3)
    bias = model[0].bias.detach().clone()
    scale = tiles.tile_scale.detach().clone()
    _step(model, opt)
    assert not torch.equal(model[0].bias.detach(), bias)
    assert not torch.equal(tiles.tile_scale.detach(), scale)


def test_bad_optimizer_settings(table):
    model, _, _ = _layer_and_opt(table, "mixed", lr=1e-3)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ConfigError, match="mode"):
        MixedPrecisionOptimizer(model, sgd, mode="sometimes")
    with pytest.raises(ConfigError, match="threshold"):
        MixedPrecisionOptimizer(model, sgd, threshold=0.0)
    plain = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="no analog layers"):
        MixedPrecisionOptimizer(plain, torch.optim.SGD(plain.parameters(), lr=1e-3))


# -- runs ------------------------------------------------------------------------------------
def _cfg(digits: Path, **kw) -> TrainConfig:
    base = dict(model="lenet", dataset=f"mnist:{digits}", epochs=1, batch_size=32, lr=3e-3)
    return TrainConfig(**{**base, **kw})


def test_train_resume_is_bit_for_bit_an_uninterrupted_run(table, digits, tmp_path):
    whole = train(_cfg(digits, epochs=2), out=tmp_path / "whole", table=table)
    train(_cfg(digits, epochs=1), out=tmp_path / "split", table=table)
    split = train(_cfg(digits, epochs=2), out=tmp_path / "split", table=table, resume=True)
    a = load_checkpoint(whole.checkpoint)["model"]
    b = load_checkpoint(split.checkpoint)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert whole.test_accuracy == split.test_accuracy
    assert whole.writes["device_writes"] == split.writes["device_writes"] > 0
    s = whole.summary()
    for key in ("test_accuracy", "epochs", "seconds_per_epoch", "device_writes",
                "write_pulses", "writes_per_device_mean", "writes_per_device_max",
                "checkpoint"):
        assert key in s
    assert s["epochs"] == 2 and s["test_accuracy"] > 0.7   # two easy classes; chance 0.5


def test_a_run_never_overwrites_or_mixes_checkpoints(table, digits, tmp_path):
    res = train(_cfg(digits, mode="float"), out=tmp_path, table=None)
    before = res.checkpoint.read_bytes()
    with pytest.raises(TrainingError, match="--resume"):
        train(_cfg(digits, mode="float"), out=tmp_path)
    with pytest.raises(TrainingError, match="another configuration"):
        train(_cfg(digits, mode="float", lr=0.5, epochs=2), out=tmp_path, resume=True)
    again = train(_cfg(digits, mode="float"), out=tmp_path, resume=True)   # finished: reported
    assert again.test_accuracy == res.test_accuracy and again.history == res.history
    train(_cfg(digits, mode="float", epochs=2), out=tmp_path / "two")
    with pytest.raises(TrainingError, match="already holds 2 epochs"):
        train(_cfg(digits, mode="float"), out=tmp_path / "two", resume=True)
    assert res.checkpoint.read_bytes() == before


def test_a_non_finite_loss_stops_the_run_cleanly(table, digits, tmp_path, monkeypatch):
    train(_cfg(digits, mode="float"), out=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    import training.trainer as trainer

    monkeypatch.setattr(trainer.F, "cross_entropy",
                        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="lower --lr"):
        train(_cfg(digits, mode="float", epochs=2), out=tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_evaluate_on_the_training_chip_and_on_a_fresh_one(table, digits, tmp_path):
    res = train(_cfg(digits, epochs=2, read_noise=False), out=tmp_path / "mixed", table=table)
    same = evaluate(res.checkpoint, f"mnist:{digits}", table=table)
    assert same["test_accuracy"] == res.test_accuracy      # the same chip, read noise-free
    fresh = evaluate(res.checkpoint, f"mnist:{digits}", table=table, fresh_chip=9)
    assert 0.0 <= fresh["test_accuracy"] <= 1.0 and fresh["fresh_chip"] == 9
    # the energy of the writes done: the pulses times the energy surface's pulse energy
    from calibration.energy_model import pulse_energy_j

    pulse = pulse_energy_j(table)
    summary = res.summary()
    assert summary["write_pulses"] > 0
    assert summary["write_energy_uj"] == pytest.approx(summary["write_pulses"] * pulse * 1e6)
    assert same["write_pulses"] == 0 and same["write_energy_uj"] == 0.0
    assert fresh["write_pulses"] > 0
    assert fresh["write_energy_uj"] == pytest.approx(fresh["write_pulses"] * pulse * 1e6)
    flt = train(_cfg(digits, mode="float"), out=tmp_path / "float")
    with pytest.raises(ConfigError, match="calibration table"):
        evaluate(flt.checkpoint, f"mnist:{digits}", fresh_chip=1)
    mapped = evaluate(flt.checkpoint, f"mnist:{digits}", table=table, fresh_chip=1)
    assert 0.0 <= mapped["test_accuracy"] <= 1.0
    assert mapped["write_pulses"] > 0 and mapped["write_energy_uj"] > 0
    assert flt.summary()["write_energy_uj"] is None        # a float run wrote no device


def test_evaluate_refuses_what_it_cannot_use(table, digits, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        evaluate(tmp_path / "missing.pt", f"mnist:{digits}")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a readable checkpoint"):
        evaluate(bad, f"mnist:{digits}")
    res = train(_cfg(digits, mode="float"), out=tmp_path / "f")
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    import pickle

    data = np.zeros((4, 3072), dtype=np.uint8)
    (cifar / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3]}))
    with pytest.raises(ConfigError, match="checkpoint was trained on"):
        evaluate(res.checkpoint, f"cifar10:{cifar}")


def test_bad_run_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown model"):
        TrainConfig(model="alexnet")
    with pytest.raises(ConfigError, match="unknown mode"):
        TrainConfig(mode="analog")
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="programming"):
        TrainConfig(programming="magic")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=500)


def test_cli_train_and_evaluate_json_contract(tiny_calibration, digits, tmp_path):
    out = tmp_path / "run"
    res = _cli("train", "--table", str(tiny_calibration), "--dataset", f"mnist:{digits}",
               "--epochs", "1", "--batch-size", "32", "--out", str(out), "--plot",
               str(tmp_path / "plots"), "--json")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("test_accuracy", "epochs", "seconds_per_epoch", "device_writes",
                "write_pulses", "writes_per_device_mean", "writes_per_device_max",
                "checkpoint", "write_energy_uj"):
        assert key in payload
    assert payload["write_energy_uj"] == pytest.approx(
        payload["write_pulses"] * payload["pulse_energy_pj"] * 1e-6)
    assert payload["pulse_energy_pj"] > 0
    assert "epoch 1/1" in res.stderr                      # progress on stderr
    assert (tmp_path / "plots" / "curves.png").is_file()
    assert (tmp_path / "plots" / "writes.png").is_file()
    ev = _cli("evaluate", "--checkpoint", payload["checkpoint"], "--dataset",
              f"mnist:{digits}", "--fresh-chip", "4", "--json")
    assert ev.returncode == 0, ev.stderr
    evaluated = json.loads(ev.stdout.strip().splitlines()[-1])
    assert 0.0 <= evaluated["test_accuracy"] <= 1.0
    assert evaluated["write_pulses"] > 0 and evaluated["write_energy_uj"] > 0
    bad = _cli("train", "--table", str(tiny_calibration), "--model", "alexnet", "--json")
    assert bad.returncode == 2 and "unknown model 'alexnet'" in bad.stderr
    bad = _cli("train", "--table", str(tiny_calibration), "--dataset", f"mnist:{tmp_path}",
               "--out", str(tmp_path / "x"), "--json")
    assert bad.returncode == 2 and "t10k-images-idx3-ubyte" in bad.stderr


@pytest.mark.parametrize("name", ["vgg8", "resnet18"])
def test_cifar_models_map_onto_chip_tiles_and_train(table, name):
    """The full-size CIFAR-10 models on 64x64 tiles (the tiny calibration's circuit at the
    chip's tile size), every device mapped, two mixed-precision steps on random data."""
    chip = AnalogChip(table, seed=0, rows=64, cols=64, programming="statistical")
    torch.manual_seed(0)
    model = from_digital(build_model(name), chip)
    layers = dict(analog_layers(model))
    assert sum(int(np.prod(t.weight.shape)) for t in layers.values()) > 10_000_000
    assert all(t.chip.rows == 64 for t in layers.values())
    opt = MixedPrecisionOptimizer(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    writes = 0
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        writes += opt.step_writes
    assert opt.write_summary()["device_writes"] == writes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_step_on_cuda(table):
    chip = AnalogChip(table, seed=0, device="cuda")
    model = from_digital(build_model("lenet"), chip)
    opt = MixedPrecisionOptimizer(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    x, y = torch.rand(4, 1, 28, 28, device="cuda"), torch.tensor([1, 2, 3, 4], device="cuda")
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert next(model.parameters()).is_cuda


def test_the_surrogate_block_sets_verify_noise_and_travels_in_the_checkpoint(table, digits,
                                                                            tmp_path):
    w = torch.randn(6, 8) * 0.3

    def written(config):
        chip = AnalogChip(table, seed=3, read_noise=True, config=config)
        layer = AnalogLinear(8, 6, chip=chip, weight=w).tiles
        return chip, layer.conductances()

    ideal_chip, ideal = written(SurrogateConfig())
    # 0.003 of the window: 0.38 of a level on this table's 128, inside the +-0.5 level band
    noisy_chip, noisy = written(SurrogateConfig(verify_reads=1, read_noise=0.003))
    assert not ideal_chip.verify_noise and noisy_chip.verify_noise
    assert noisy_chip.programmer.verify_noise_s == pytest.approx(
        0.003 * (noisy_chip.g_hi - noisy_chip.g_lo))
    # noisy verify reads end each device farther from its target than ideal ones
    targets = ideal_chip.g_lo + ideal_chip.programmer.level_spacing_s * torch.round(
        (ideal - ideal_chip.g_lo) / ideal_chip.programmer.level_spacing_s)
    assert float((noisy - targets).abs().mean()) > float((ideal - targets).abs().mean())
    averaged = AnalogChip(table, seed=3, config=SurrogateConfig(verify_reads=4,
                                                                read_noise=0.006))
    assert averaged.programmer.verify_noise_s == pytest.approx(
        averaged.programmer.read_noise_s / 2)
    # a verify noisier than its band cannot resolve the levels: refused, naming the fix
    with pytest.raises(ConfigError, match=r"verify_reads >= 26") as err:
        AnalogChip(table, seed=3, config=SurrogateConfig(verify_reads=1))
    assert err.value.field == "surrogate.verify_reads"
    assert not AnalogChip(table, seed=3, read_noise=False,
                          config=SurrogateConfig(verify_reads=1)).verify_noise

    cfg = _cfg(digits, surrogate=SurrogateConfig(write_threshold=0.1, read_noise=0.01))
    assert cfg.threshold == 0.1
    run = train(cfg, out=tmp_path / "run", table=table)
    saved = load_checkpoint(run.checkpoint)["config"]
    assert saved["surrogate"]["write_threshold"] == 0.1
    assert TrainConfig(**saved) == cfg
    with pytest.raises(TrainingError, match="surrogate"):
        train(_cfg(digits, epochs=2), out=tmp_path / "run", table=table, resume=True)
