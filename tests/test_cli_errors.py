"""Bad input over every subcommand: exit status 2, a message naming the option, one JSON
error object on stdout with ``--json``, and no file changed.

One table of cases, run in this process through ``cli.main`` (each case would
cost a second or more of start-up as a subprocess); the subprocess path is covered by the
tests that follow it and by ``test_cli.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import proctree
import pytest

from cli.main import main
from cli.parser import build_parser

pytestmark = pytest.mark.spice


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_calibration):
    """Files the cases point at: a real table and checkpoint, and broken ones."""
    from training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("cli-errors")
    table = root / "tiny.h5"
    shutil.copy(tiny_calibration, table)
    (root / "folder").mkdir()
    (root / "a-file").write_text("not a folder\n")
    (root / "malformed.toml").write_text("[tia]\nr_feedback_ohm = -5\n")
    (root / "not-toml.toml").write_text("[tia\n")
    (root / "latin1.toml").write_bytes("# r\xe9glage\n[tia]\n".encode("latin-1"))
    (root / "rows16.toml").write_text("[array]\nrows = 16\n")
    (root / "levels4.toml").write_text("[levels]\ncount = 4\ng_min_us = 8.2\n"
                                       "g_max_us = 32.9\n")
    (root / "levels1.toml").write_text("[levels]\ncount = 1\n")
    (root / "noisy-verify.toml").write_text("[surrogate]\nverify_reads = 1\n")
    (root / "junk.h5").write_bytes(b"\x89HDF\r\n junk" * 10)
    (root / "junk.pt").write_bytes(b"PK\x03\x04 junk" * 10)
    (root / "empty").mkdir()
    run = root / "float-run"
    with open(os.devnull, "w") as quiet:
        result = train(TrainConfig(mode="float", epochs=1, test_size=200), out=run,
                       stream=quiet)
    return {"root": root, "table": table, "ckpt": result.checkpoint}


def _snapshot(*folders: Path) -> dict[str, tuple[int, int] | str]:
    """Every file's size and modification time, every folder's name (a folder's own time
    changes when a write check makes and removes a probe in it, which changes nothing)."""
    entries: dict[str, tuple[int, int] | str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            st = path.lstat()
            entries[str(path)] = "folder" if path.is_dir() else (st.st_size, st.st_mtime_ns)
    return entries


# (case id, argv with {placeholders}, the option the message must name)
CASES = [
    ("pulses-negative-count", "device pulses --set -1 --reset 0", "--set"),
    ("pulses-missing-option", "device pulses --reset 0", "--set"),
    ("pulses-negative-seed", "device pulses --set 1 --reset 0 --seed -3", "--seed"),
    ("pulses-seed-not-a-number", "device pulses --set 1 --reset 0 --seed x", "--seed"),
    ("pulses-amplitude-too-high", "device pulses --set 1 --reset 0 --amplitude 5",
     "--amplitude"),
    ("pulses-amplitude-nan", "device pulses --set 1 --reset 0 --amplitude nan", "--amplitude"),
    ("pulses-negative-width", "device pulses --set 1 --reset 0 --width -1e-7", "--width"),
    ("pulses-initial-outside-window", "device pulses --set 1 --reset 0 --initial-us 90",
     "--initial-us"),
    ("pulses-unknown-preset", "device pulses --set 1 --reset 0 --preset huge", "--preset"),
    ("pulses-config-is-a-folder", "device pulses --set 1 --reset 0 --config {root}/folder",
     "--config"),
    ("pulses-config-not-utf8", "device pulses --set 1 --reset 0 --config {root}/latin1.toml",
     "--config"),
    ("pulses-config-not-toml", "device pulses --set 1 --reset 0 --config {root}/not-toml.toml",
     "--config"),
    ("pulses-config-missing", "device pulses --set 1 --reset 0 --config {root}/none.toml",
     "--config"),
    ("pulses-config-bad-field", "device pulses --set 1 --reset 0 --config {root}/malformed.toml",
     "--config"),
    ("pulses-unknown-option", "device pulses --set 1 --reset 0 --bogus", "--bogus"),
    ("array-zero-rows", "array --rows 0", "--rows"),
    ("array-cols-not-a-number", "array --cols x", "--cols"),
    ("array-negative-seed", "array --seed -1", "--seed"),
    ("calibrate-negative-workers", "calibrate --preset tiny --workers -1", "--workers"),
    ("calibrate-unknown-surface", "calibrate --preset tiny --surfaces bogus --out {root}/c",
     "--surfaces"),
    ("calibrate-out-under-a-file", "calibrate --preset tiny --out {root}/a-file/sub", "--out"),
    ("calibrate-out-read-only", "calibrate --preset tiny --out {ro}/t.h5", "--out"),
    ("calibrate-out-full", "calibrate --preset tiny --out {full}", "--out"),
    ("report-missing-table", "report --table {root}/none.h5 --out {root}/report", "--table"),
    ("report-junk-table", "report --table {root}/junk.h5 --out {root}/report", "--table"),
    ("report-out-is-a-file", "report --table {table} --out {root}/a-file", "--out"),
    ("report-missing-out", "report --table {table}", "--out"),
    ("validate-malformed-config", "validate --table {table} --config {root}/malformed.toml",
     "--config"),
    ("validate-preset-contradicts-table", "validate --table {table} --preset chip", "--preset"),
    ("validate-config-contradicts-table", "validate --table {table} --config {root}/rows16.toml",
     "--config"),
    ("validate-plot-read-only", "validate --table {table} --plot {ro}/p.png", "--plot"),
    ("validate-plot-is-a-folder", "validate --table {table} --plot {root}/folder", "--plot"),
    ("validate-zero-cases", "validate --table {table} --cases 0", "--cases"),
    ("validate-unknown-method", "validate --table {table} --method bogus", "--method"),
    ("validate-negative-seed", "validate --table {table} --seed -2", "--seed"),
    ("train-levels-on-a-table-of-others",
     "train --table {table} --config {root}/levels4.toml --out {root}/run", "--config"),
    ("train-verify-cannot-resolve-the-levels",
     "train --table {table} --config {root}/noisy-verify.toml --out {root}/run", "--config"),
    ("train-one-level", "train --preset tiny --config {root}/levels1.toml --out {root}/run",
     "--config"),
    ("train-lr-too-high", "train --table {table} --lr 20 --out {root}/run", "--lr"),
    ("train-lr-nan", "train --table {table} --lr nan --out {root}/run", "--lr"),
    ("train-zero-epochs", "train --table {table} --epochs 0 --out {root}/run", "--epochs"),
    ("train-unknown-model", "train --table {table} --model bogus --out {root}/run", "--model"),
    ("train-unknown-mode", "train --table {table} --mode bogus --out {root}/run", "--mode"),
    ("train-unknown-optimizer", "train --table {table} --optimizer bogus --out {root}/run",
     "--optimizer"),
    ("train-unknown-programming", "train --table {table} --programming bogus --out {root}/run",
     "--programming"),
    ("train-unknown-dataset", "train --table {table} --dataset bogus --out {root}/run",
     "--dataset"),
    ("train-threshold-too-high", "train --table {table} --threshold 2 --out {root}/run",
     "--threshold"),
    ("train-zero-test-size", "train --table {table} --test-size 0 --out {root}/run",
     "--test-size"),
    ("train-negative-chip-seed", "train --table {table} --chip-seed -1 --out {root}/run",
     "--chip-seed"),
    ("train-preset-contradicts-table", "train --table {table} --preset chip --out {root}/run",
     "--preset"),
    ("train-float-malformed-config",
     "train --mode float --config {root}/malformed.toml --out {root}/run", "--config"),
    ("train-float-junk-table", "train --mode float --table {root}/junk.h5 --out {root}/run",
     "--table"),
    ("train-out-read-only", "train --mode float --out {ro}/run", "--out"),
    ("train-out-is-a-file", "train --mode float --out {root}/a-file", "--out"),
    ("train-out-full", "train --mode float --out {full}/run", "--out"),
    ("train-plot-read-only", "train --mode float --out {root}/run --plot {ro}/plots", "--plot"),
    ("train-unknown-device", "train --mode float --out {root}/run --device bogus", "--device"),
    ("train-resume-nothing", "train --mode float --out {root}/empty --resume", "--out"),
    ("evaluate-missing-checkpoint", "evaluate --checkpoint {root}/none.pt", "--checkpoint"),
    ("evaluate-junk-checkpoint", "evaluate --checkpoint {root}/junk.pt", "--checkpoint"),
    ("evaluate-negative-fresh-chip", "evaluate --checkpoint {ckpt} --fresh-chip -1",
     "--fresh-chip"),
    ("evaluate-missing-dataset-folder",
     "evaluate --checkpoint {ckpt} --dataset cifar10:{root}/none", "--dataset"),
    ("evaluate-malformed-config", "evaluate --checkpoint {ckpt} --config {root}/malformed.toml",
     "--config"),
    ("evaluate-preset-contradicts-table",
     "evaluate --checkpoint {ckpt} --table {table} --preset chip --fresh-chip 3", "--preset"),
    ("demo-negative-seed", "demo --seed -1", "--seed"),
    ("demo-workers-not-a-number", "demo --workers x", "--workers"),
    ("unknown-command", "frob", "frob"),
    ("no-command", "", "COMMAND"),
]


@pytest.mark.parametrize("argv, option", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_the_option_named(argv, option, workspace, request, tmp_path,
                                                    monkeypatch, capsys):
    unused = tmp_path / "unused"
    ro = request.getfixturevalue("read_only_dir") if "{ro}" in argv else unused
    full = request.getfixturevalue("full_dir") if "{full}" in argv else unused
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CIRCUITSIM_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    args = argv.format(root=workspace["root"], table=workspace["table"],
                       ckpt=workspace["ckpt"], ro=ro, full=full).split()
    before = _snapshot(workspace["root"], tmp_path)

    status = main(args + ["--json"])

    out, err = capsys.readouterr()
    assert status == 2, err
    message = err.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("circuitsim: "), err
    assert option in message[0], message[0]
    assert "Traceback" not in err
    answer = json.loads(out.strip().splitlines()[-1])
    assert set(answer) == {"error", "kind", "field", "option", "status"}
    assert answer["status"] == 2 and option in answer["error"]
    if option.startswith("--"):
        assert answer["option"] == option
    assert _snapshot(workspace["root"], tmp_path) == before, "a refused command changed files"


def test_every_option_has_help():
    parser = build_parser()
    missing = []

    def walk(p, prefix):
        for action in p._actions:
            if action.choices and hasattr(action, "_name_parser_map"):
                for name, child in action._name_parser_map.items():
                    walk(child, f"{prefix} {name}")
            elif action.option_strings and not action.help:
                missing.append(f"{prefix} {action.option_strings[-1]}")

    walk(parser, "circuitsim")
    assert not missing, f"options without help text: {missing}"


def test_without_json_nothing_goes_to_stdout(capsys):
    assert main(["array", "--seed", "-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--seed" in err


def test_negative_numbers_are_values(capsys):
    """``--width -1e-7`` is the option's value (refused for its range), not an option."""
    assert main(["device", "pulses", "--set", "1", "--reset", "0", "--width", "-1e-7"]) == 2
    err = capsys.readouterr().err
    assert "expected one argument" not in err and "width -1e-07 s" in err


def test_ctrl_c_exits_130_with_one_line_and_stops_ngspice():
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "cli", "device", "pulses",
                             "--set", "5000", "--reset", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    workers: list[int] = []
    try:
        workers = proctree.wait_for_descendants(proc.pid, "_worker.py", 1, timeout_s=60)
        assert workers, "the ngspice worker process never started"
        time.sleep(1.0)  # inside the transient
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proctree.clean_up(proc, workers)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["circuitsim: interrupted: nothing was written"], err
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["kind"] == "Interrupted" and answer["status"] == 130
    assert not proctree.survivors(workers, timeout_s=5.0), "worker processes left running"

def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_validate_keeps_its_results_when_the_plot_fails(workspace, small_dir, capsys):
    """The folder passes the write check, the PNG does not fit: the solved cases are
    still reported, with the plot's error, and the status says something failed."""
    status = main(["validate", "--table", str(workspace["table"]), "--cases", "1",
                       "--plot", str(small_dir / "p.png"), "--json"])
    out, err = capsys.readouterr()
    assert status == 1, err
    result = _last_json(out)
    assert result["cases"] == 1 and result["rms_lsb"] >= 0 and "plot" not in result
    assert "No space left" in result["plot_error"]
    assert "the plot could not be written" in err and "results below are complete" in err
    assert list(small_dir.iterdir()) == [], "no partial PNG is left behind"


def test_train_keeps_its_checkpoint_when_the_plot_fails(workspace, small_dir, tmp_path,
                                                        capsys):
    status = main(["train", "--mode", "float", "--epochs", "1", "--test-size", "200",
                       "--out", str(tmp_path / "run"), "--plot", str(small_dir), "--json"])
    out, err = capsys.readouterr()
    assert status == 1, err
    result = _last_json(out)
    assert Path(result["checkpoint"]).is_file() and result["epochs"] == 1
    assert "No space left" in result["plot_error"]


def test_ctrl_c_during_train_says_what_the_checkpoint_holds(tmp_path):
    import re
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "train", "--mode", "float",
                             "--epochs", "200", "--test-size", "200", "--out", str(out),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:  # the line after epoch 2 (its checkpoint may be on its way)
            if re.match(r"epoch 2: loss", line):
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(rf"circuitsim: interrupted in epoch \d+; the checkpoint "
                         rf"{re.escape(str(out / 'checkpoint.pt'))} holds (\d+) epochs?: "
                         r"continue with --resume", last)
    assert found, last
    assert json.loads(stdout.strip().splitlines()[-1])["kind"] == "Interrupted"
    from training.trainer import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == int(found.group(1)) >= 1


def test_train_defaults_are_the_configuration_defaults():
    """The command line states ``train``'s defaults again for its help; they must be the
    ones a run from the API gets."""
    from training.trainer import TrainConfig

    args = build_parser().parse_args(["train"])
    cfg = TrainConfig()
    for name in ("model", "dataset", "mode", "epochs", "batch_size", "optimizer", "lr",
                 "weight_decay", "seed", "chip_seed", "range_margin", "programming",
                 "test_size", "qat_noise"):
        assert getattr(args, name) == getattr(cfg, name), name
    assert args.no_read_noise is not cfg.read_noise
