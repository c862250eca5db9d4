"""Tests of the ngspice runner layer (circuitsim.runner and what it is made of: discovery,
deck, verdict, backends, _worker, rawfile).

Tests marked ``spice`` run the real ngspice 46 (program and shared library), on both
backends where the behaviour must match. Circuits are tiny; the whole file runs in well
under 30 s on 2 cores. Tests without the marker need no simulator.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import proctree
from circuitsim import deck as deck_module
from circuitsim import backends, discovery, verdict
from circuitsim.rawfile import parse_raw
from circuitsim.runner import (
    CONVERGENCE_AIDS,
    NgspiceInfo,
    Runner,
    SimResult,
    check_ngspice,
)
from netlists.config import SolverConfig
from netlists.errors import (
    ConvergenceError,
    NetlistError,
    SimulationTimeout,
    SimulatorError,
    SimulatorNotFoundError,
)

pytestmark = pytest.mark.timeout(120)

BACKENDS = ("shared", "batch")
REPO = Path(__file__).resolve().parents[1]

# Title deliberately contains "error": PySpice would flag this successful solve as failed.
DIVIDER = """error budget divider
V1 in 0 DC 3
R1 in out 1k
R2 out 0 2k
.op
.end
"""

# A step into an RC low-pass, tau = R*C = 1 us. The 1 ps edge delays the response by
# 0.5 ps, negligible next to the tolerance below.
RC_STEP = """rc step response
V1 in 0 PULSE(0 1 0 1p 1p 1 2)
R1 in out 1k
C1 out 0 1n
.tran 10n 5u
.end
"""
TAU_S = 1e-6
# ngspice's trapezoidal integration keeps the local truncation error near reltol (1e-3)
# times trtol's safety factor; measured max error on ngspice 46 is 2.9e-6 V on both
# backends. 1e-4 V leaves a 30x margin and still fails for a wrong tau or a missing edge.
RC_ABS_TOL_V = 1e-4

# A subcircuit (hierarchical node and source names), a .dc sweep and a device quantity.
SWEEP = """dc sweep through a subcircuit
V1 in 0 DC 0
R1 in out 1k
X1 out 0 half
.subckt half a b
R2 a n3 1k
Vs n3 b 0
.ends
.save v(in) v(out) v(x1.n3) i(v1) i(v.x1.vs) @r1[i]
.dc V1 0 3 1
.end
"""

# Unknown subcircuit and model: ngspice rejects the deck.
MALFORMED = """broken deck
V1 in 0 DC 3
R1 in out 1k
X1 out 0 nosuchsub
.op
.end
"""

# An undefined parameter leaves libngspice unable to load anything until it is reset.
POISONING = """undefined parameter
V1 in 0 DC {nosuchparam}
R1 in 0 1k
.op
.end
"""

# V(n) = V(n) + 1 has no solution: every convergence aid fails.
NONCONVERGENT = """impossible operating point
B1 n 0 V=V(n)+1
R1 n 0 1k
.op
.end
"""

# 1 s of transient at a 1 ps maximum step: ~1e12 steps, far beyond any timeout used here.
ENDLESS = """endless transient
V1 in 0 SIN(0 1 1meg)
R1 in out 1k
C1 out 0 1n
.tran 1p 1
.end
"""


@pytest.fixture(scope="module")
def runners() -> Iterator[dict[str, Runner]]:
    """One runner per backend, shared by the tests that leave it healthy."""
    made = {backend: Runner(SolverConfig(backend=backend)) for backend in BACKENDS}
    yield made
    for runner in made.values():
        runner.close()


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Forget cached ngspice probes before and after a test that fakes their results."""
    discovery._clear_caches()
    yield
    discovery._clear_caches()


# ------------------------------------------------------------------------------------
# With ngspice
# ------------------------------------------------------------------------------------

@pytest.mark.spice
def test_check_ngspice_finds_version_and_klu() -> None:
    info = check_ngspice()
    assert isinstance(info, NgspiceInfo)
    assert info.version >= 42
    assert info.klu is True
    assert info.executable and info.library
    assert check_ngspice() is not None  # cached: a second call is free


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_divider_operating_point_is_exact(runners: dict[str, Runner], backend: str) -> None:
    result = runners[backend].run(DIVIDER, name="divider")
    assert isinstance(result, SimResult)
    assert result.backend == backend
    assert result.attempts == 1
    assert list(result.vectors) == ["i(v1)", "v(in)", "v(out)"]
    for values in result.vectors.values():
        assert values.shape == (1,) and values.dtype == np.float64
    # A linear resistive circuit is solved exactly up to rounding.
    assert result["v(out)"][0] == pytest.approx(2.0, rel=1e-12)
    assert result["v(in)"][0] == pytest.approx(3.0, rel=1e-12)
    assert result["i(v1)"][0] == pytest.approx(-1e-3, rel=1e-12)
    # The runner added .options klu (the deck has none) and ngspice used it.
    assert "Using KLU" in result.log
    assert result.seconds > 0


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_rc_transient_matches_exponential(runners: dict[str, Runner], backend: str) -> None:
    result = runners[backend].run(RC_STEP, name="rc")
    time, v_out = result["time"], result["v(out)"]
    assert list(result.vectors)[0] == "time"
    assert time[0] == 0.0
    assert time[-1] == pytest.approx(5e-6, rel=1e-9)
    expected = 1.0 - np.exp(-time / TAU_S)
    assert np.max(np.abs(v_out - expected)) < RC_ABS_TOL_V


@pytest.mark.spice
def test_both_backends_give_identical_names_and_values(runners: dict[str, Runner]) -> None:
    for deck, name in ((SWEEP, "sweep"), (RC_STEP, "rc"), (DIVIDER, "divider")):
        shared = runners["shared"].run(deck, name=name)
        batch = runners["batch"].run(deck, name=name)
        assert list(shared.vectors) == list(batch.vectors), name
        for key in shared.vectors:
            # The batch raw file carries 16 significant digits.
            np.testing.assert_allclose(shared[key], batch[key], rtol=1e-12, atol=1e-15)
    sweep = runners["shared"].run(SWEEP, name="sweep")
    assert list(sweep.vectors) == [
        "v-sweep", "@r1[i]", "i(v.x1.vs)", "i(v1)", "v(in)", "v(out)", "v(x1.n3)"]
    np.testing.assert_allclose(sweep["v-sweep"], [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(sweep["v(out)"], 0.5 * sweep["v-sweep"])


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_netlist_raises_netlist_error(runners: dict[str, Runner],
                                                backend: str) -> None:
    runner = runners[backend]
    with pytest.raises(NetlistError, match=r"broken-deck-7") as caught:
        runner.run(MALFORMED, name="broken-deck-7")
    assert "unknown subckt" in str(caught.value)
    with pytest.raises(NetlistError, match=r"(?s)poison.*Undefined parameter"):
        runner.run(POISONING, name="poison")
    # The library was left unusable by the second deck; the runner recovers.
    assert runner.run(DIVIDER, name="after")["v(out)"][0] == pytest.approx(2.0)


@pytest.mark.spice
@pytest.mark.parametrize("backend, retries", [("shared", 2), ("batch", 2), ("shared", 5)])
def test_nonconvergent_circuit_raises_after_all_aids(
        backend: str, retries: int, caplog: pytest.LogCaptureFixture) -> None:
    used = min(retries, len(CONVERGENCE_AIDS))  # retries beyond the documented aids: unused
    with Runner(SolverConfig(backend=backend, retries=retries)) as runner, \
            caplog.at_level(logging.WARNING, logger="circuitsim.runner"):
        with pytest.raises(ConvergenceError, match=r"impossible-op") as caught:
            runner.run(NONCONVERGENT, name="impossible-op")
        retried = [r for r in caplog.records if "retrying with convergence aid" in r.message]
        assert len(retried) == used
        message = str(caught.value)
        assert f"after {used + 1} attempt(s)" in message
        assert "timestep too small" in message.lower()
        for aid in CONVERGENCE_AIDS[:used]:
            assert aid.name in message
            assert aid.cards[0] in caught.value.log  # each attempt's log names its aids
        assert runner.run(DIVIDER, name="after")["v(out)"][0] == pytest.approx(2.0)


@pytest.mark.spice
def test_convergence_aid_rescues_floating_node() -> None:
    # A current source into a capacitor has no DC path: ngspice 46 "succeeds" with
    # v(n) = inf. The runner must not return that; the rshunt aid gives n a DC path.
    deck = "floating node\nI1 0 n 1e-12\nC1 n 0 1p\n.op\n.end\n"
    with Runner(SolverConfig(retries=0)) as runner:
        with pytest.raises(ConvergenceError, match="non-finite"):
            runner.run(deck, name="floating")
    with Runner(SolverConfig(retries=2)) as runner:
        result = runner.run(deck, name="floating")
    assert result.attempts == 3
    assert result["v(n)"][0] == pytest.approx(1e-12 * 1e12)  # I * rshunt


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_kills_the_solve_and_runner_recovers(backend: str) -> None:
    with Runner(SolverConfig(backend=backend)) as runner:
        runner.run(DIVIDER, name="warm-up")  # the worker's start is not timed
        with pytest.raises(SimulationTimeout, match=r"endless-run"):
            runner.run(ENDLESS, name="endless-run", timeout_s=1)
        assert runner.run(DIVIDER, name="after")["v(out)"][0] == pytest.approx(2.0)


# A runner in a process of its own: a warm-up solve, then ENDLESS (argv: backend, decks).
_RUNNER_PROCESS = """
import sys
from circuitsim.runner import Runner
from netlists.config import SolverConfig
runner = Runner(SolverConfig(backend=sys.argv[1]))
runner.run(sys.argv[2], name="warm-up")
print("solving", flush=True)
runner.run(sys.argv[3], name="endless", timeout_s=100)
"""


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_ngspice_dies_with_the_runner_process_mid_solve(backend: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER_PROCESS, backend, DIVIDER, ENDLESS],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    below: list[int] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "solving"
        marker = "_worker.py" if backend == "shared" else " -b -r "
        below = proctree.wait_for_descendants(proc.pid, marker, 1, timeout_s=30)
        assert any(marker in proctree.command_line(p) for p in below)
        time.sleep(0.5)  # well inside the endless transient
        assert proctree.kill_parent(proc, below) == {}
    finally:
        proctree.clean_up(proc, below)


@pytest.mark.spice
def test_worker_is_recycled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="circuitsim.runner"):
        with Runner(SolverConfig(recycle_after=2)) as runner:
            for k in range(5):
                assert runner.run(DIVIDER, name=f"d{k}")["v(out)"][0] == pytest.approx(2.0)
    started = [r for r in caplog.records if r.message.startswith("started ngspice worker")]
    assert len(started) == 3  # solves 1-2, 3-4, 5


@pytest.mark.spice
def test_result_lookup_names_available_vectors(runners: dict[str, Runner]) -> None:
    result = runners["shared"].run(DIVIDER, name="divider")
    assert "v(out)" in result
    with pytest.raises(KeyError, match=r"v\(nosuch\).*v\(out\)"):
        result["v(nosuch)"]


@pytest.mark.spice
def test_missing_library_raises_not_found(monkeypatch: pytest.MonkeyPatch,
                                          fresh_probe: None) -> None:
    monkeypatch.setattr(discovery, "_find_library", lambda: None)
    with pytest.raises(SimulatorNotFoundError, match="(?s)libngspice.*apt-get install"):
        check_ngspice()
    with Runner() as runner, pytest.raises(SimulatorNotFoundError, match="libngspice"):
        runner.run(DIVIDER, name="divider")


@pytest.mark.spice
def test_unloadable_library_raises_not_found(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path, fresh_probe: None) -> None:
    fake = tmp_path / "libngspice.so.0"
    fake.write_text("not a shared library")
    monkeypatch.setenv("NGSPICE_LIBRARY_PATH", str(fake))
    with Runner() as runner, \
            pytest.raises(SimulatorNotFoundError, match="(?s)cannot load.*apt-get install"):
        runner.run(DIVIDER, name="divider")
    monkeypatch.setenv("NGSPICE_LIBRARY_PATH", str(tmp_path / "absent.so"))
    with Runner() as runner, pytest.raises(SimulatorNotFoundError, match="does not exist"):
        runner.run(DIVIDER, name="divider")


@pytest.mark.spice
def test_missing_program_raises_not_found(monkeypatch: pytest.MonkeyPatch,
                                          fresh_probe: None) -> None:
    monkeypatch.setattr(discovery, "_find_executable", lambda: None)
    with pytest.raises(SimulatorNotFoundError, match="ngspice program"):
        check_ngspice()
    with Runner(SolverConfig(backend="batch")) as runner, \
            pytest.raises(SimulatorNotFoundError, match="scripts/setup.sh"):
        runner.run(DIVIDER, name="divider")


# ------------------------------------------------------------------------------------
# Without ngspice
# ------------------------------------------------------------------------------------

def test_importing_the_runner_does_not_import_torch() -> None:
    code = "import sys, circuitsim.runner; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("deck, message", [
    ("", "empty"),
    ("t\nR1 a 0 1\n.op\n", "no .end"),
    ("t\nR1 a 0 1\n.op\n.control\nrun\n.endc\n.end\n", ".control"),
    ("t\nR1 a 0 1\n.op\n.tran 1n 1u\n.end\n", "exactly one analysis"),
    ("t\nR1 a 0 1\n.end\n", "exactly one analysis"),
    ("t\nR1 a 0 1\n.ac dec 10 1 1meg\n.end\n", "not supported"),
    ("t\nR1 a 0 1\n.op\n.end\nR2 a 0 1\n", "after .end"),
])
def test_deck_contract_is_checked_before_solving(deck: str, message: str) -> None:
    with pytest.raises(NetlistError, match=rf"deck-x.*{message}"):
        Runner().run(deck, name="deck-x")


def test_every_configurable_backend_has_a_class() -> None:
    (field,) = [f for f in dataclasses.fields(SolverConfig) if f.name == "backend"]
    assert set(field.metadata["choices"]) == set(backends.BACKENDS) == set(BACKENDS)
    for backend, kind in backends.BACKENDS.items():
        assert type(Runner(SolverConfig(backend=backend))._backend) is kind


def test_bad_arguments_are_rejected() -> None:
    runner = Runner()
    with pytest.raises(ValueError, match="name"):
        runner.run(DIVIDER, name="")
    with pytest.raises(ValueError, match="timeout_s"):
        runner.run(DIVIDER, name="d", timeout_s=0)
    with pytest.raises(TypeError, match="SolverConfig"):
        Runner(solver={"backend": "batch"})  # type: ignore[arg-type]


def test_deck_preparation_adds_klu_aids_and_control() -> None:
    deck = deck_module._prepare(RC_STEP, "rc")
    assert deck.analysis == "tran" and deck.tstop == pytest.approx(5e-6)
    plain = deck.render((), batch=False)
    assert ".options klu" in plain and ".control" not in plain
    assert plain.rstrip().endswith(".end")
    batch = deck.render(CONVERGENCE_AIDS[:2], batch=True)
    lines = batch.splitlines()
    assert lines.index(".options klu") < lines.index(CONVERGENCE_AIDS[1].cards[0]) \
        < lines.index("set num_threads=1") < lines.index(".end")
    has_klu = deck_module._prepare("t\nR1 a 0 1\n.options\n+ klu reltol=1e-4\n.op\n.end\n", "k")
    assert ".options klu" not in has_klu.render((), batch=False)


@pytest.mark.parametrize("text, value", [
    ("10n", 10e-9), ("2.5meg", 2.5e6), ("1e-6", 1e-6), ("3mil", 3 * 25.4e-6), ("4ms", 4e-3),
    ("1", 1.0), ("{tstop}", None), (".5u", 0.5e-6),
])
def test_spice_numbers(text: str, value: float | None) -> None:
    got = deck_module._spice_number(text)
    assert got == (None if value is None else pytest.approx(value))


@pytest.mark.parametrize("name, vtype, expected", [
    ("out", "voltage", "v(out)"),
    ("X1.N3", "voltage", "v(x1.n3)"),
    ("v1#branch", "current", "i(v1)"),
    ("v.x1.vs#branch", "current", "i(v.x1.vs)"),
    ("time", "time", "time"),
    ("v-sweep", "voltage", "v-sweep"),
    ("@r1[i]", "current", "@r1[i]"),
    ("v(v-sweep)", None, "v-sweep"),
    ("i(i-sweep)", None, "i-sweep"),
    ("i(@r1[i])", None, "@r1[i]"),
    ("V(OUT)", None, "v(out)"),
    ("i(v1)", None, "i(v1)"),
])
def test_vector_names_are_normalized(name: str, vtype: str | None, expected: str) -> None:
    assert verdict._canonical(name, vtype) == expected


_RAW_HEADER = (b"Title: t\nDate: today\nPlotname: Transient Analysis\nFlags: real\n"
               b"No. Variables: 2\nNo. Points: {points}\nVariables:\n"
               b"\t0\ttime\ttime\n\t1\tv(out)\tvoltage\n")


def _raw(points: int, body: bytes) -> bytes:
    return _RAW_HEADER.replace(b"{points}", str(points).encode()) + body


def test_raw_ascii_and_binary_are_read() -> None:
    ascii_body = b"Values:\n0\t\t0.0\n\t1.5\n1\t\t1e-9\n\t-2.5e-3\n"
    (plot,) = parse_raw(_raw(2, ascii_body))
    assert plot.plotname == "Transient Analysis"
    assert plot.names == ("time", "v(out)") and plot.types == ("time", "voltage")
    np.testing.assert_array_equal(plot.vectors()["v(out)"], [1.5, -2.5e-3])
    data = np.array([[0.0, 1.5], [1e-9, -2.5e-3]], dtype="<f8").tobytes()
    (binary,) = parse_raw(_raw(2, b"Binary:\n" + data))
    np.testing.assert_array_equal(binary.values, plot.values)
    two = parse_raw(_raw(2, ascii_body) + _raw(1, b"Values:\n0\t\t5\n\t6\n"))
    assert [p.points for p in two] == [2, 1]


@pytest.mark.parametrize("raw, message", [
    (b"", "empty"),
    (_raw(2, b"Values:\n0\t\t0.0\n\t1.5\n1\t\t1e-9\n"), "truncated"),
    (_raw(1, b"Values:\n0\t\t0.0\n\t1.5\n1\t\t1e-9\n\t2\n"), "longer than"),
    (_raw(2, b"Binary:\n" + bytes(24)), "truncated"),
    (_raw(1, b"Values:\n0\t\t0.0,0.0\n\t1.5,0.0\n"), "complex"),
    (_raw(1, b"Values:\n0\t\t0.0\n\tabc\n"), "non-numeric"),
    (_raw(2, b"Values:\n0\t\t0.0\n\t1.5\n5\t\t1e-9\n\t2\n"), "point indices"),
    (_RAW_HEADER.replace(b"{points}", b"1")[:60], "truncated"),
    (_RAW_HEADER.replace(b"Flags: real", b"Flags: complex").replace(b"{points}", b"0")
     + b"Values:\n", "only real"),
])
def test_raw_reader_is_strict(raw: bytes, message: str) -> None:
    with pytest.raises(SimulatorError, match=message):
        parse_raw(raw, source="test.raw")
