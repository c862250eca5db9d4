"""Package layout rules from the design: layers import downwards only, circuitsim stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["netlists", "circuitsim", "calibration", "surrogate", "training", "cli"]


def test_import_circuitsim_does_not_import_torch():
    code = "import sys, circuitsim, netlists, calibration; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("layer", LAYERS[:LAYERS.index("surrogate")])
def test_no_layer_below_the_surrogate_imports_torch(layer):
    for path in (ROOT / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert "torch" not in [n.split(".")[0] for n in names], f"{path} imports torch"


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_never_imports_a_higher_one(layer):
    higher = set(LAYERS[LAYERS.index(layer) + 1:])
    for path in (ROOT / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in higher, f"{path} imports {name}"


def test_each_top_level_folder_has_a_readme():
    for folder in LAYERS + ["tests", "benchmarks"]:
        assert (ROOT / folder / "README.md").is_file(), folder
