"""An ngspice that is too old, or built without KLU, is refused with install instructions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from circuitsim import discovery
from circuitsim.runner import Runner, check_ngspice
from netlists.config import SolverConfig
from netlists.errors import SimulatorNotFoundError

DIVIDER = "divider\nV1 a 0 1\nR1 a b 1k\nR2 b 0 1k\n.op\n.end\n"


@pytest.fixture()
def fake_ngspice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put a stand-in `ngspice` program first on PATH that prints a given version banner."""

    def make(banner: str) -> None:
        exe = tmp_path / "ngspice"
        exe.write_text(f"#!/bin/sh\nprintf '%s\\n' '{banner}'\nexit 0\n")
        exe.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        discovery._clear_caches()

    yield make
    discovery._clear_caches()


def test_too_old_ngspice_is_refused(fake_ngspice) -> None:
    fake_ngspice("** ngspice-39 : Circuit level simulation program\n"
                 "** Compiled with KLU Direct Linear Solver")
    with pytest.raises(SimulatorNotFoundError,
                       match=r"(?s)ngspice-39, older than ngspice-42.*apt-get install"):
        check_ngspice()
    with Runner(SolverConfig(backend="batch")) as runner, \
            pytest.raises(SimulatorNotFoundError, match="older than"):
        runner.run(DIVIDER, name="divider")


def test_ngspice_without_klu_is_refused(fake_ngspice) -> None:
    fake_ngspice("** ngspice-46 : Circuit level simulation program\n"
                 "** Compiled with Sparse Direct Linear Solver")
    with pytest.raises(SimulatorNotFoundError, match="(?s)without the KLU solver.*setup.sh"):
        check_ngspice()
