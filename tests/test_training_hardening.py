"""Runs that must fail cleanly or not at all: evaluation on the run's own held-out split,
the calibration table named in results, checkpoint checksums, divergence caught before the
analog read.

Analog runs use the ``tiny`` calibration and the small MNIST-format folder of
``conftest.digits``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import training.trainer as trainer
from calibration.store import open_table
from training.analog import AnalogChip, AnalogLinear, NonFiniteValues
from training.optim import MixedPrecisionOptimizer
from training.trainer import TrainConfig, TrainingError, evaluate, load_checkpoint, train


@pytest.fixture(scope="module")
def table(tiny_calibration):
    return open_table(tiny_calibration)


def _cfg(digits: Path, **kw) -> TrainConfig:
    base = dict(model="lenet", dataset=f"mnist:{digits}", epochs=1, batch_size=32, lr=3e-3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def whole(table, digits, tmp_path_factory):
    """A two-epoch mixed run."""
    return train(_cfg(digits, epochs=2), out=tmp_path_factory.mktemp("whole"), table=table)


# -- 1. evaluation scores the run's own held-out split ---------------------------------------
def test_evaluate_on_mnist5k_uses_the_runs_own_split(tmp_path, monkeypatch):
    loaded = []
    real = trainer.load_dataset

    def spy(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(trainer, "load_dataset", spy)
    cfg = TrainConfig(model="lenet", dataset="mnist5k", mode="float", epochs=1, seed=1,
                      test_size=3000, batch_size=64)
    res = train(cfg, out=tmp_path)
    ev = evaluate(res.checkpoint, "mnist5k")
    trained, scored = loaded
    assert torch.equal(scored.test.x, trained.test.x) and torch.equal(scored.test.y,
                                                                      trained.test.y)
    seen = {row.numpy().tobytes() for row in trained.train.x}
    assert not any(row.numpy().tobytes() in seen for row in scored.test.x)
    assert ev["test_samples"] == 3000 and ev["split_seed"] == 1
    assert ev["test_accuracy"] == res.test_accuracy          # float weights: the same score


# -- 2. results name the calibration table ---------------------------------------------------
@pytest.mark.spice
def test_results_name_the_calibration_table(table, digits, whole, tmp_path):
    path, digest = str(table.path), table.attrs["content_hash"]
    s = whole.summary()
    assert (s["table"], s["table_hash"]) == (path, digest)
    ev = evaluate(whole.checkpoint, f"mnist:{digits}")        # found from the checkpoint
    assert (ev["table"], ev["table_hash"]) == (path, digest)
    assert ev["test_samples"] == 64 and ev["split_seed"] is None
    flt = train(_cfg(digits, mode="float"), out=tmp_path)
    assert (flt.summary()["table"], flt.summary()["table_hash"]) == (None, None)
    ev = evaluate(flt.checkpoint, f"mnist:{digits}", table=table)   # float weights: unused
    assert (ev["table"], ev["table_hash"]) == (None, None)
    ev = evaluate(flt.checkpoint, f"mnist:{digits}", table=table, fresh_chip=2)
    assert (ev["table"], ev["table_hash"]) == (path, digest)


# -- 3. checkpoints carry a checksum ---------------------------------------------------------
def _tensor_offset(data: bytes, tensor: torch.Tensor) -> int:
    raw = tensor.contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0, "the tensor's bytes are not unique"
    return at + len(raw) // 2


@pytest.mark.spice
def test_a_damaged_checkpoint_is_refused(whole, tmp_path):
    data = whole.checkpoint.read_bytes()
    saved = load_checkpoint(whole.checkpoint)["model"]
    positions = {
        "device states": _tensor_offset(data, saved["features.0.tiles.state"]),
        "write counters": _tensor_offset(data, saved["classifier.1.tiles.write_count"]),
        "middle": len(data) // 2,
        "pickled structure": data.find(b"data.pkl") + 40,
        "header digest": len(b"circuitsim-checkpoint 2 sha256:") + 5,
    }
    for what, at in positions.items():
        bad = tmp_path / f"flipped-{what.replace(' ', '-')}.pt"
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
        with pytest.raises(TrainingError) as excinfo:
            load_checkpoint(bad)
        assert str(bad) in str(excinfo.value) and "damaged" in str(excinfo.value), what
    for keep in (len(data) - 1, len(data) // 3, 40):
        cut = tmp_path / f"cut-{keep}.pt"
        cut.write_bytes(data[:keep])
        with pytest.raises(TrainingError, match="damaged") as excinfo:
            load_checkpoint(cut)
        assert str(cut) in str(excinfo.value)
    assert load_checkpoint(whole.checkpoint)["epoch"] == 2          # the original is intact


def test_a_checkpoint_without_checksum_is_refused(tmp_path):
    old = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "config": {}, "epoch": 1}, old)      # what format 1 wrote
    with pytest.raises(TrainingError, match="format 1, which carries no checksum") as excinfo:
        load_checkpoint(old)
    assert str(old) in str(excinfo.value) and "train again" in str(excinfo.value)


# -- 4. divergence is caught before the analog read ------------------------------------------
@pytest.mark.spice
def test_the_analog_read_refuses_non_finite_inputs(table):
    layer = AnalogLinear(12, 5, chip=AnalogChip(table, seed=0, read_noise=False))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.rand(4, 12)
        x[2, 7] = bad
        with pytest.raises(NonFiniteValues, match="input of the analog layer .* NaN or inf"):
            layer(x)


@pytest.mark.spice
def test_a_non_finite_update_writes_no_device(table):
    torch.manual_seed(0)
    model = nn.Sequential(AnalogLinear(12, 5, chip=AnalogChip(table, seed=0, read_noise=False)))
    tiles = model[0].tiles
    opt = MixedPrecisionOptimizer(model, torch.optim.SGD(model.parameters(), lr=1.0))
    model(torch.rand(4, 12)).sum().backward()
    tiles.weight.grad[3, 1] = float("nan")
    state, writes = tiles.state.clone(), tiles.write_count.clone()
    with pytest.raises(NonFiniteValues, match="update of the analog weights 0.tiles"):
        opt.step()
    assert torch.equal(tiles.state, state) and torch.equal(tiles.write_count, writes)
