"""Quantization-aware training: the fake quantizer, the layers it swaps in, and ``--mode
qat`` runs through training, resume and evaluation (``tiny`` calibration, no ngspice)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from calibration.store import open_table
from netlists.errors import ConfigError
from training.models import build_model
from training.qat import fake_quantize, make_quantization_aware
from training.trainer import TrainConfig, evaluate, load_checkpoint, train


@pytest.fixture(scope="module")
def table(tiny_calibration):
    return open_table(tiny_calibration)


def test_fake_quantize_lands_on_the_levels_and_passes_the_gradient():
    w = torch.tensor([-1.0, -0.52, -0.1, 0.0, 0.26, 0.49, 0.9], requires_grad=True)
    q = fake_quantize(w, levels=3)           # pairs of 3-level devices: -2..2 steps of 0.5
    assert torch.equal(q.detach(), torch.tensor([-1.0, -0.5, 0.0, 0.0, 0.5, 0.5, 1.0]))
    (q * torch.arange(7.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(7.0))   # straight through
    torch.manual_seed(0)
    noisy = torch.stack([fake_quantize(w, 3, noise=0.5).detach() - q.detach()
                         for _ in range(4000)])
    assert noisy.std().item() == pytest.approx(0.5 * 0.5, rel=0.05)   # 0.5 level of 0.5


def test_layers_keep_their_parameters_and_keys():
    model = build_model("lenet")
    before = model.state_dict()
    params = [id(p) for p in model.parameters()]
    make_quantization_aware(model, levels=4, noise=0.5)
    assert [id(p) for p in model.parameters()] == params
    assert model.state_dict().keys() == before.keys()
    swapped = [m for m in model.modules() if hasattr(m, "qat_levels")]
    assert len(swapped) == 3 and all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in swapped)
    plain = build_model("lenet")
    plain.load_state_dict(model.state_dict())     # a QAT checkpoint loads into the model
    x = torch.randn(5, 1, 28, 28)
    model.eval()
    a, b = model(x), model(x)
    assert torch.equal(a, b), "no noise in evaluation"
    model.train()
    assert not torch.equal(model(x), a), "noise in training"
    with pytest.raises(ConfigError, match="levels"):
        make_quantization_aware(build_model("lenet"), levels=1, noise=0.0)
    with pytest.raises(ConfigError, match="qat_noise"):
        make_quantization_aware(build_model("lenet"), levels=4, noise=-1.0)


def _cfg(digits, **kw) -> TrainConfig:
    base = dict(model="lenet", dataset=f"mnist:{digits}", epochs=1, batch_size=32, lr=3e-3,
                mode="qat")
    return TrainConfig(**{**base, **kw})


def test_qat_run_resumes_and_evaluates_on_its_levels_and_on_a_chip(table, digits, tmp_path):
    with pytest.raises(ConfigError, match="needs a calibration table"):
        train(_cfg(digits), out=tmp_path / "none")
    whole = train(_cfg(digits, epochs=2), out=tmp_path / "whole", table=table)
    train(_cfg(digits, epochs=1), out=tmp_path / "split", table=table)
    split = train(_cfg(digits, epochs=2), out=tmp_path / "split", table=table, resume=True)
    a, b = (load_checkpoint(r.checkpoint) for r in (whole, split))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert whole.writes == {} and whole.table_hash == table.attrs["content_hash"]
    assert a["qat_levels"] == table.hardware().levels.count
    own = evaluate(whole.checkpoint, f"mnist:{digits}")
    assert own["test_accuracy"] == whole.test_accuracy > 0.7 and own["table"] is None
    chip = evaluate(whole.checkpoint, f"mnist:{digits}", table=table, fresh_chip=4)
    assert 0.0 <= chip["test_accuracy"] <= 1.0 and chip["table_hash"] is not None
    with pytest.raises(ConfigError, match="qat checkpoint needs a calibration table"):
        evaluate(whole.checkpoint, f"mnist:{digits}", fresh_chip=4)
    with pytest.raises(ConfigError, match="qat_noise"):
        TrainConfig(mode="qat", qat_noise=-0.1)


def test_cli_qat_run_and_its_errors(tiny_calibration, digits, tmp_path, capsys):
    import json

    from cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--table", str(tiny_calibration), "--mode", "qat", "--dataset",
                 f"mnist:{digits}", "--epochs", "1", "--batch-size", "32", "--out", str(out),
                 "--json"]) == 0
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert run["mode"] == "qat" and run["device_writes"] == 0 and run["table_hash"]
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--dataset",
                 f"mnist:{digits}", "--json"]) == 0
    own = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert own["test_accuracy"] == run["test_accuracy"]
    assert main(["train", "--table", str(tiny_calibration), "--mode", "qat", "--qat-noise",
                 "-1", "--out", str(tmp_path / "bad"), "--json"]) == 2
    err = capsys.readouterr()
    assert "--qat-noise" in err.err and not (tmp_path / "bad").exists()
