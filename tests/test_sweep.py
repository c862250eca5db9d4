"""``circuitsim sweep``: the spec's checks, a grid on the local pool and on a local Dask
cluster, resume, failures reported by their parameters (``tiny`` calibration, tiny data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netlists.errors import ConfigError
from training.errors import TrainingError
from training.sweep import load_spec, run_sweep

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _grid(tiny_calibration, digits, grid: str, evaluate: str = "") -> str:
    return (f'[base]\nmodel = "lenet"\ndataset = "mnist:{digits}"\nepochs = 1\n'
            f'batch_size = 32\ntable = "{tiny_calibration}"\n\n[grid]\n{grid}\n{evaluate}')


@pytest.mark.parametrize("text, match", [
    ("[bases]\nmodel = 'lenet'\n", r"\[bases\] is not a table"),
    ("[grid]\nlearning_rate = [0.1]\n", r"'learning_rate' is not an option"),
    ("[grid]\nmode = []\n", "must be a non-empty list"),
    ("[grid]\nmode = 'mixed'\n", "must be a non-empty list"),
    ("[base]\nmode = 'mixed'\n[grid]\nmode = ['float']\n", "in \\[base\\] and in \\[grid\\]"),
    ("[grid]\nmode = ['float', 'fancy']\n", r"run 1 \(\{\"mode\": \"fancy\"\}\): unknown mode"),
    ("[grid]\nlr = [0.1, -1.0]\n", r"run 1 .*lr = -1.0 is out of range"),
    ("[grid]\nthreshold = [2.0]\n", r"run 0 .*write_threshold"),
    ("[base]\npreset = 'huge'\n", "unknown preset"),
    ("[base]\nconfig = 'absent.toml'\n", "config = 'absent.toml' is not a file"),
    ("[base]\nconfig = 3\n", "config = 3 is not a file"),
    ("[base]\ntable = 'x.h5'\npreset = 'chip'\n", "table and preset/config both"),
    ("[evaluate]\nfresh_chips = [-1]\n", "fresh_chips = \\[-1\\] must be a list"),
    ("[evaluate]\nchips = [1]\n", "takes only fresh_chips"),
    ("[grid]\nseed = [1, 1]\n", "lists a value twice"),
])
def test_bad_specs_are_refused_before_anything_runs(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(_spec(tmp_path, text))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_shipped_specs_load():
    for path in sorted(EXPERIMENTS.glob("*.toml")):
        spec = load_spec(path)
        assert spec.runs, path


def test_a_grid_runs_resumes_and_reports_failures(tmp_path, tiny_calibration, digits):
    text = _grid(tiny_calibration, digits,
                 'mode = ["float", "mixed"]\nseed = [0, 1]', "[evaluate]\nfresh_chips = [7]\n")
    spec = load_spec(_spec(tmp_path, text))
    out = tmp_path / "out"
    res = run_sweep(spec, out=out, workers=2)
    assert res.failed == 0 and len(res.rows) == 4
    for row in res.rows:
        # one epoch of six batches: a mixed run may not yet have written a device
        low = 0 if row["mode"] == "mixed" else 1e-9
        assert row["status"] == "done" and low <= row["test_accuracy"] <= 1, row
        assert set(row["fresh_chip_accuracies"]) == {"7"}
        assert (row["table_hash"] is not None) == (row["mode"] == "mixed")
    assert res.table.read_text().count("\n") == 5 and (out / "plots" / "sweep.png").exists()
    assert json.loads((out / "results.json").read_text())[0]["mode"] == "float"
    # the same folder again: refused without --resume, nothing redone with it
    with pytest.raises(TrainingError, match="--resume"):
        run_sweep(spec, out=out, workers=0)
    results = sorted(out.glob("runs/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    results[1].unlink()                             # as if killed before it finished
    again = run_sweep(spec, out=out, workers=0, resume=True)
    assert [r["test_accuracy"] for r in again.rows] == [r["test_accuracy"] for r in res.rows]
    assert results[0].stat().st_mtime_ns == stamps[0] and results[1].exists()
    other = load_spec(_spec(tmp_path, text.replace("seed = [0, 1]", "seed = [0]"), "b.toml"))
    with pytest.raises(TrainingError, match="another spec"):
        run_sweep(other, out=out, workers=0, resume=True)


def test_a_failed_run_is_reported_by_its_parameters(tmp_path, tiny_calibration, digits):
    text = _grid(tiny_calibration, digits,
                 f'dataset = ["mnist:{digits}", "mnist:{tmp_path / "absent"}"]\n'
                 'mode = ["float"]').replace(f'dataset = "mnist:{digits}"\n', "")
    res = run_sweep(load_spec(_spec(tmp_path, text)), out=tmp_path / "out", workers=0,
                    plots=False)
    assert res.failed == 1
    ok, bad = res.rows
    assert ok["status"] == "done" and bad["status"] == "failed"
    assert "absent" in bad["dataset"] and "absent" in bad["error"]


def test_cli_sweep_json_and_dask(tmp_path, tiny_calibration, digits, capsys):
    import distributed  # a test dependency (pyproject's `test` extra)

    from cli.main import main

    path = _spec(tmp_path, _grid(tiny_calibration, digits, 'mode = ["float", "qat"]'))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        status = main(["sweep", str(path), "--out", str(tmp_path / "out"), "--scheduler",
                       cluster.scheduler_address, "--no-plots", "--json"])
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 0 and payload["table"] == str(tmp_path / "out" / "results.csv")
    assert [r["mode"] for r in payload["runs"]] == ["float", "qat"]
    for key in ("threshold", "seed", "test_accuracy", "fresh_chip_accuracy",
                "device_writes", "writes_per_device_mean", "writes_per_device_max"):
        assert key in payload["runs"][0]
    assert main(["sweep", str(tmp_path / "nope.toml"), "--json"]) == 2
