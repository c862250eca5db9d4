"""Runs that must fail cleanly or not at all: evaluation on the run's own held-out split,
the calibration table named in results, checkpoint checksums, divergence caught before the
analog read, an unusable output folder or a full disk, Ctrl-C.

Analog runs use the ``tiny`` calibration and the small MNIST-format folder of
``conftest.digits`` (192 training digits: 6 batches of 32 per epoch).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import training.checkpoint as checkpoint
import training.trainer as trainer
from calibration.store import open_table
from netlists.errors import OutputError
from training.analog import AnalogChip, AnalogLinear, NonFiniteValues
from training.optim import MixedPrecisionOptimizer
from training.trainer import (TrainConfig, TrainingError, TrainingInterrupted, evaluate,
                              load_checkpoint, train)

BATCHES = 6                                   # per epoch: 192 training digits, batches of 32


@pytest.fixture(scope="module")
def table(tiny_calibration):
    return open_table(tiny_calibration)


def _cfg(digits: Path, **kw) -> TrainConfig:
    base = dict(model="lenet", dataset=f"mnist:{digits}", epochs=1, batch_size=32, lr=3e-3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def whole(table, digits, tmp_path_factory):
    """An uninterrupted two-epoch mixed run: what a stopped and resumed run must equal."""
    return train(_cfg(digits, epochs=2), out=tmp_path_factory.mktemp("whole"), table=table)


def _same_weights(a: Path, b: Path) -> None:
    ma, mb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key


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
def test_the_analog_read_refuses_non_finite_inputs(table):
    layer = AnalogLinear(12, 5, chip=AnalogChip(table, seed=0, read_noise=False))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.rand(4, 12)
        x[2, 7] = bad
        with pytest.raises(NonFiniteValues, match="input of the analog layer .* NaN or inf"):
            layer(x)


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


def _poison_after(monkeypatch, poison, at_step: int, ckpt: Path, snapshot: dict) -> None:
    """The run goes on as usual until step ``at_step`` of its optimizer, after which
    ``poison(model)`` is applied; the checkpoint's bytes at that moment go to ``snapshot``."""
    real_build, real_optimizer = trainer._build, trainer._make_optimizer
    built = []

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    def make(cfg, params):
        opt = real_optimizer(cfg, params)
        step, calls = opt.step, [0]

        def poisoned_step(*args, **kwargs):
            out = step(*args, **kwargs)
            calls[0] += 1
            if calls[0] == at_step:
                snapshot["bytes"] = ckpt.read_bytes()
                with torch.no_grad():
                    poison(built[-1][0])
            return out

        opt.step = poisoned_step
        return opt

    monkeypatch.setattr(trainer, "_build", build)
    monkeypatch.setattr(trainer, "_make_optimizer", make)


def _inf_bias(model):           # a digital parameter: the next analog layer's input is inf
    model.features[0].bias.fill_(float("inf"))


def _nan_weight(model):         # the inner optimizer's update of the first analog weights
    model.features[0].tiles.weight[0, 0] = float("nan")


@pytest.mark.parametrize("poison, where", [(_inf_bias, "input of the analog layer"),
                                           (_nan_weight, "update of the analog weights")])
def test_divergence_stops_before_the_analog_read_and_keeps_the_checkpoint(
        table, digits, whole, tmp_path, monkeypatch, poison, where):
    ckpt, snapshot = tmp_path / "checkpoint.pt", {}
    _poison_after(monkeypatch, poison, BATCHES + 2, ckpt, snapshot)
    with pytest.raises(TrainingError) as excinfo:
        train(_cfg(digits, epochs=2), out=tmp_path, table=table)
    text = str(excinfo.value)
    assert "non-finite at epoch 2, batch" in text and where in text
    assert "lower --lr (now 0.003)" in text and f"{ckpt} is unchanged" in text
    assert ckpt.read_bytes() == snapshot["bytes"]
    assert load_checkpoint(ckpt)["epoch"] == 1
    monkeypatch.undo()
    resumed = train(_cfg(digits, epochs=2), out=tmp_path, table=table, resume=True)
    _same_weights(resumed.checkpoint, whole.checkpoint)




# -- 5. an unusable output folder, a full disk -----------------------------------------------
def _out_error(out: Path, tmp_path: Path) -> str:
    """train into ``out`` on a dataset that does not exist: the folder must be refused
    first. Returns the message."""
    cfg = TrainConfig(mode="float", dataset=f"mnist:{tmp_path / 'no-such-folder'}")
    with pytest.raises(OutputError) as excinfo:
        train(cfg, out=out)
    assert excinfo.value.field == "--out"
    return str(excinfo.value)


def test_an_output_under_a_file_or_that_is_a_file_is_refused_first(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("a file\n")
    text = _out_error(plain / "run", tmp_path)
    assert f"--out {str(plain / 'run')!r} cannot be created: {str(plain)!r} is a file" in text
    text = _out_error(plain, tmp_path)
    assert f"--out {str(plain)!r} is a file, not a folder" in text
    assert plain.read_text() == "a file\n"


@pytest.mark.parametrize("where, reasons", [
    ("read_only_dir", ("Read-only file system", "Permission denied")),
    ("full_dir", ("No space left on device",)),
])
def test_an_output_folder_that_takes_no_file_is_refused_first(request, tmp_path, where,
                                                              reasons):
    folder = request.getfixturevalue(where)
    before = sorted(folder.iterdir())
    text = _out_error(folder / "run", tmp_path)
    assert f"--out {str(folder / 'run')!r} cannot be written" in text
    assert any(reason in text for reason in reasons), text
    assert sorted(folder.iterdir()) == before                    # nothing made, nothing left


class _FullFile:
    """A file on a disk that fills up after ``room`` bytes (ENOSPC, as ``write(2)`` says)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _full_disk(monkeypatch, room: int) -> None:
    real = checkpoint._HashingWriter.__init__
    monkeypatch.setattr(checkpoint._HashingWriter, "__init__",
                        lambda self, f: real(self, _FullFile(f, room)))


def test_a_full_disk_at_the_checkpoint_keeps_the_previous_one(digits, tmp_path, monkeypatch):
    first = train(_cfg(digits, mode="float"), out=tmp_path)
    before = first.checkpoint.read_bytes()
    _full_disk(monkeypatch, room=1000)
    with pytest.raises(TrainingError) as excinfo:
        train(_cfg(digits, mode="float", epochs=2), out=tmp_path, resume=True)
    text = str(excinfo.value)
    assert f"the checkpoint {first.checkpoint} after epoch 2 could not be written (No space " \
           "left on device)" in text and "previous checkpoint" in text and "is intact" in text
    assert first.checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]   # no temp file
    with pytest.raises(TrainingError, match="no earlier checkpoint"):
        train(_cfg(digits, mode="float"), out=tmp_path / "fresh")
    assert list((tmp_path / "fresh").iterdir()) == []


# -- 8. Ctrl-C -------------------------------------------------------------------------------
class _CtrlC:
    """A progress stream that raises KeyboardInterrupt when ``text`` is written."""

    def __init__(self, text: str) -> None:
        self.text = text

    def write(self, s: str) -> int:
        if self.text in s:
            raise KeyboardInterrupt
        return len(s)

    def flush(self) -> None:
        pass


def test_ctrl_c_says_what_was_kept_and_the_run_resumes(table, digits, whole, tmp_path):
    with pytest.raises(TrainingInterrupted) as excinfo:
        train(_cfg(digits, epochs=2), out=tmp_path, table=table, stream=_CtrlC("epoch 2/2"))
    stop = excinfo.value
    assert isinstance(stop, KeyboardInterrupt)
    ckpt = tmp_path / "checkpoint.pt"
    assert stop.checkpoint == ckpt and stop.epochs_done == 1
    assert str(stop) == f"interrupted in epoch 2; the checkpoint {ckpt} holds 1 epoch: " \
                        "continue with --resume"
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    resumed = train(_cfg(digits, epochs=2), out=tmp_path, table=table, resume=True)
    _same_weights(resumed.checkpoint, whole.checkpoint)
    with pytest.raises(TrainingInterrupted) as excinfo:
        train(_cfg(digits), out=tmp_path / "first", table=table, stream=_CtrlC("epoch 1/1"))
    assert excinfo.value.checkpoint is None and excinfo.value.epochs_done == 0
    assert "nothing was kept" in str(excinfo.value)
