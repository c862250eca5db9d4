"""The module's energy and latency model: tile operation, tile counts per image, the command.

The tile operation reads the shipped ``tiny`` table's ``energy`` surface, solved in ngspice
(``scripts/make_test_table.py``); the TIA supplies' energy in ngspice is checked in
``tests/test_surface_array_energy.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from calibration.energy_model import BLOCKS, SPICE_BLOCKS, describe, tile_operation
from calibration.store import _RESERVED_ROOT, open_table, write_table
from netlists.array import read_timing
from netlists.config import load_config, preset
from netlists.energy_config import EnergyModelConfig, load_energy_config
from netlists.errors import ConfigError, TableError
from tests.conftest import TEST_TABLE
from training.energy import count_tile_ops, image_figures


@pytest.fixture(scope="module")
def table():
    return open_table(TEST_TABLE)


def test_the_breakdown_names_every_block_and_adds_up_to_the_total(table):
    op = tile_operation(table)
    out = describe(op)
    assert list(out["breakdown"]) == list(BLOCKS)
    # exactly: the total is the sum of the blocks, in their order
    assert out["vmm_energy_nj"] == sum(out["breakdown"].values())
    assert op.total_j == sum(op.energy_j.values())
    assert out["tops_per_w"] == pytest.approx(2 * 8 * 8 / (out["vmm_energy_nj"] * 1e-9) / 1e12)
    assert out["crossbar_fraction"] == pytest.approx(out["breakdown"]["crossbar"]
                                                     / out["vmm_energy_nj"])
    assert {b for b, s in out["breakdown_source"].items() if s == "spice"} == set(SPICE_BLOCKS)
    # the SPICE blocks are the surface's random cases
    e = table.surface("energy").datasets
    random = e["vmm_tile_kind"].data == 0
    assert op.energy_j["tia"] == pytest.approx(e["vmm_tia_supply_energy_j"].data[random].mean())
    assert op.energy_j["crossbar"] > 0 and op.energy_j["tia"] > op.energy_j["crossbar"]
    # latency: the bit-serial read, then the conversions of one ADC's columns in a row
    hw = table.hardware()
    cfg = EnergyModelConfig()
    assert op.latency_s == pytest.approx(read_timing(hw.drive).t_stop_s
                                         + hw.adc.columns_per_adc * cfg.adc_conversion_time_s)
    assert op.energy_j["adc"] == pytest.approx(hw.array.cols * cfg.adc_fom_j_per_step * 256)


def test_the_energy_block_loads_from_toml_and_is_not_in_the_calibration_hash(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text("[energy]\nadc_fom_j_per_step = 5e-15\ncontrol_power_w = 0.0\n"
                    "[tia]\ni_quiescent_a = 2e-5\n")
    cfg = load_energy_config(path)
    assert cfg.adc_fom_j_per_step == 5e-15 and cfg.control_power_w == 0.0
    hw, _ = load_config(path, base=preset("tiny"))
    assert hw.tia.i_quiescent_a == 2e-5          # a SPICE field, hashed with the hardware
    assert "energy" not in hw.to_dict()
    plain, _ = load_config(tmp_path / "e.toml", base=preset("tiny"))
    assert plain.to_dict() == hw.to_dict()
    with pytest.raises(ConfigError, match=r"energy.adc_fom_j_per_step = -1.0 is out of range"):
        EnergyModelConfig(adc_fom_j_per_step=-1.0)
    path.write_text("[energy]\nadc_bits = 8\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['adc_bits'\] in \[energy\]"):
        load_energy_config(path)
    with pytest.raises(ConfigError, match="tia.v_supply_high_v"):
        preset("tiny").replace(tia={"v_supply_high_v": 1.0})     # below the 1.5 V rail


def test_tile_operations_per_image_follow_the_layer_mapping():
    lenet = {layer.name: layer for layer in count_tile_ops("lenet", 64, 64)}
    # conv1: 25 x 8 on one tile, 24 x 24 positions; conv2: 200 rows on 4 tiles, 8 x 8
    # positions; the classifier: 256 rows on 4 tiles, once
    assert [(x.tiles, x.vectors, x.tile_ops) for x in lenet.values()] == \
        [(1, 576, 576), (4, 64, 256), (4, 1, 4)]
    assert all(x.reads == 1 for x in lenet.values())        # pixels in [0, 1], then ReLUs
    vgg = count_tile_ops("vgg8", 256, 64)
    assert vgg[0].reads == 2 and all(x.reads == 1 for x in vgg[1:])   # normalized pixels
    assert vgg[1].tile_grid == (5, 4) and vgg[1].vectors == 32 * 32


def test_image_figures_multiply_the_tile_operation(table):
    op = tile_operation(table)
    fig = image_figures("lenet", op)
    assert fig["tile_ops"] == sum(x["tile_ops"] for x in fig["layers"])
    assert fig["image_energy_uj"] == pytest.approx(fig["tile_ops"] * op.total_j * 1e6)
    sequential = sum(x["vectors"] * x["reads"] for x in fig["layers"])
    assert fig["image_latency_ms"] == pytest.approx(sequential * op.latency_s * 1e3)


def _without_energy(table, path) -> None:
    """``table`` written to ``path`` without its ``energy`` surface."""
    attrs = {k: v for k, v in table.attrs.items() if k not in _RESERVED_ROOT}
    write_table(path, surfaces={k: v for k, v in table.surfaces.items() if k != "energy"},
                attrs=attrs)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_energy_json_contract_and_errors(table, tmp_path):
    env = {**os.environ, "CIRCUITSIM_CACHE_DIR": str(tmp_path / "cache")}
    res = _cli("energy", "--table", str(TEST_TABLE), "--model", "lenet", "--json", env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("vmm_energy_nj", "tops_per_w", "image_energy_uj", "image_latency_ms",
                "crossbar_fraction", "breakdown", "paper"):
        assert key in out
    assert out["vmm_energy_nj"] == sum(out["breakdown"].values())
    assert out["paper"]["image_energy_uj"] == 1.9 and out["paper"]["tile_ops"] == 707
    assert "TOPS/W" in res.stderr                         # the summary goes to stderr

    bad = _cli("energy", "--table", str(TEST_TABLE), "--model", "alexnet", "--json", env=env)
    assert bad.returncode == 2 and "choose one of ['lenet', 'vgg8', 'resnet18']" in bad.stderr
    assert json.loads(bad.stdout.strip().splitlines()[-1])["field"] == "model"

    cfg = tmp_path / "bad.toml"
    cfg.write_text("[energy]\ncontrol_power_w = -1\n")
    bad = _cli("energy", "--preset", "tiny", "--config", str(cfg), "--json", env=env)
    assert bad.returncode == 2 and "energy.control_power_w = -1" in bad.stderr

    # a table without an energy surface: the message says what builds one
    stripped = tmp_path / "no-energy.h5"
    _without_energy(table, stripped)
    bad = _cli("energy", "--table", str(stripped), "--json", env=env)
    assert bad.returncode == 2 and "no 'energy' surface" in bad.stderr
    assert "circuitsim calibrate" in bad.stderr
    assert not (tmp_path / "cache").exists()                      # nothing was written


def test_a_table_without_the_energy_surface_is_refused_in_the_library(table, tmp_path):
    stripped = tmp_path / "no-energy.h5"
    _without_energy(table, stripped)
    with pytest.raises(TableError, match="circuitsim calibrate"):
        tile_operation(open_table(stripped))
