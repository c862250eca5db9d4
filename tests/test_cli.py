"""The command line: JSON contract on the last stdout line, errors with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spice


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1])


def test_device_pulses_json_contract():
    out = _last_json(_cli("device", "pulses", "--set", "4", "--reset", "3", "--seed", "1",
                          "--json"))
    g = out["conductance_us"]
    assert len(g) == 4 + 3 + 1
    assert out["read_voltage_v"] == 0.1
    assert 3.5 < g[0] < 5.5, "starts from the floor"
    assert g[4] > g[0] and g[-1] < g[4]


def test_device_pulses_amplitude_width_and_initial_state():
    out = _last_json(_cli("device", "pulses", "--set", "0", "--reset", "2", "--amplitude", "2.5",
                          "--width", "200e-9", "--initial-us", "30", "--json"))
    assert out["conductance_us"][0] == pytest.approx(30.0, rel=0.02)
    assert out["reset_amplitude_v"] == 2.5 and out["width_s"] == 2e-7


def test_array_json_contract():
    out = _last_json(_cli("array", "--preset", "chip", "--rows", "8", "--cols", "8",
                          "--seed", "3", "--json"))
    assert len(out["codes"]) == len(out["ideal_codes"]) == 8
    assert out["solve_seconds"] > 0
    assert all(isinstance(c, int) and 0 <= c <= 255 for c in out["codes"])
    # A real circuit: close to the ideal crossbar on a small tile, not necessarily equal.
    assert max(abs(a - b) for a, b in zip(out["codes"], out["ideal_codes"])) <= 3


def test_json_is_only_on_the_last_line_and_logs_go_to_stderr():
    proc = _cli("device", "pulses", "--set", "1", "--reset", "0", "--json")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])
    assert "1T1R cell" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["array", "--preset", "huge"], "unknown preset 'huge'"),
    (["array", "--rows", "0"], "--rows"),
    (["device", "pulses", "--set", "1", "--reset", "0", "--amplitude", "5"], "validity"),
    (["device", "pulses", "--set", "1", "--reset", "0", "--initial-us", "90"], "window"),
])
def test_bad_input_exits_2_with_a_clear_message(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[tia]\nr_feedback_ohm = -5\n")
    proc = _cli("array", "--config", str(cfg), "--json")
    assert proc.returncode == 2 and "tia.r_feedback_ohm = -5" in proc.stderr


def test_missing_ngspice_says_how_to_install(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), NGSPICE_LIBRARY_PATH=str(tmp_path / "none.so"))
    proc = subprocess.run([sys.executable, "-m", "cli", "device", "pulses", "--set",
                           "1", "--reset", "0"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert "ngspice" in proc.stderr and "apt-get install" in proc.stderr


def test_console_script_is_installed():
    exe = shutil.which("circuitsim", path=str(Path(sys.executable).parent))
    assert exe, "the circuitsim console script is installed next to the interpreter"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "device" in proc.stdout and "array" in proc.stdout


def test_demo_on_the_tiny_preset(tmp_path):
    env = dict(os.environ, CIRCUITSIM_CACHE_DIR=str(tmp_path))
    out = _last_json(_cli("demo", "--preset", "tiny", "--json", env=env))
    assert len(out["device_conductance_us"]) == 201
    assert len(out["codes"]) == len(out["ideal_codes"]) == 8
    assert Path(out["calibration"]).parent == tmp_path
    assert out["calibration_cache_hit"] is False
    assert out["surrogate_validation"]["cases"] == 4
    assert out["surrogate_validation"]["rms_lsb"] < 0.05
    assert 0.0 <= out["lenet_test_accuracy"] <= 1.0 and out["lenet_device_writes"] > 0
    again = _last_json(_cli("demo", "--preset", "tiny", "--json", env=env))
    assert again["calibration_cache_hit"] is True
