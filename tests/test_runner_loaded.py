"""Tests of re-solving a loaded circuit (Runner.load, LoadedCircuit.alter / run).

Tests marked ``spice`` run the real ngspice 46 on both backends: ``shared`` keeps the
circuit loaded in the worker and uses ngspice's ``alter``; ``batch`` rewrites the source
lines and runs the whole deck. Both must give the same answers, and the same answers as a
fresh ``Runner.run`` of the equivalently edited deck. Circuits are tiny.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from circuitsim import deck as deck_module
from circuitsim.runner import CircuitInvalidatedError, LoadedCircuit, Runner, SimResult
from netlists.config import SolverConfig
from netlists.errors import (
    CircuitSimError,
    ConfigError,
    NetlistError,
    SimulationTimeout,
)

pytestmark = pytest.mark.timeout(120)

BACKENDS = ("shared", "batch")

# v(m) = (Vrow0/1k + Vrow1/2k + I1) / (1/1k + 1/2k + 1/4k): solved exactly up to rounding.
NETWORK = """resistor network
Vrow0 a 0 DC 1
Vrow1 b 0 2 ; the DC value without the keyword, and an inline comment
I1 0 m DC 0
R1 a m 1k
R2 b m 2k
R3 m 0 4k
.op
.end
"""


def network_vm(vrow0: float, vrow1: float, i1: float) -> float:
    return (vrow0 / 1e3 + vrow1 / 2e3 + i1) / (1 / 1e3 + 1 / 2e3 + 1 / 4e3)


def network_deck(vrow0: float, vrow1: float, i1: float) -> str:
    """NETWORK edited by hand: what a fresh Runner.run of the altered deck sees."""
    return (NETWORK.replace("Vrow0 a 0 DC 1", f"Vrow0 a 0 DC {vrow0!r}")
            .replace("Vrow1 b 0 2 ;", f"Vrow1 b 0 {vrow1!r} ;")
            .replace("I1 0 m DC 0", f"I1 0 m DC {i1!r}"))


# An RC low-pass (tau = 1 us) driven by a PWL source with a continuation line.
RC_PWL = """pwl driven rc
Vin in 0 DC 0
+ PWL(0 0 1p 1 5u 1)
R1 in out 1k
C1 out 0 1n
.tran 10n 5u
.end
"""
TAU_S = 1e-6
RC_ABS_TOL_V = 2e-4  # as in test_runner.py (measured error ~3e-6 V per volt), 2 V steps
SETTLED = 1 - np.exp(-5.0)  # a step at t = 0, seen at tstop = 5 tau

# A current source into a capacitor has no DC path: only the rshunt convergence aid
# (attempt 3) gives a finite operating point, v(n) = I * 1e12.
FLOATING = "floating node\nI1 0 n 1e-12\nC1 n 0 1p\n.op\n.end\n"

# Unknown subcircuit: ngspice rejects the deck when it parses it.
MALFORMED = "broken deck\nV1 in 0 DC 3\nR1 in out 1k\nX1 out 0 nosuchsub\n.op\n.end\n"


@pytest.fixture(scope="module")
def runners() -> Iterator[dict[str, Runner]]:
    """One runner per backend for loaded circuits."""
    made = {backend: Runner(SolverConfig(backend=backend)) for backend in BACKENDS}
    yield made
    for runner in made.values():
        runner.close()


@pytest.fixture(scope="module")
def reference() -> Iterator[Runner]:
    """A separate runner for fresh Runner.run references (a plain run invalidates)."""
    with Runner() as runner:
        yield runner


def _started(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.message.startswith("started ngspice worker") for r in caplog.records)


# ------------------------------------------------------------------------------------
# With ngspice
# ------------------------------------------------------------------------------------

@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_resolve_with_changed_dc_values(runners: dict[str, Runner], reference: Runner,
                                           backend: str) -> None:
    with runners[backend].load(NETWORK, name="network") as circuit:
        assert isinstance(circuit, LoadedCircuit)
        assert circuit.name == "network"
        assert circuit.sources == ("i1", "vrow0", "vrow1")
        first = circuit.run()
        assert first["v(m)"][0] == pytest.approx(network_vm(1, 2, 0), rel=1e-12)

        # Names are case-insensitive; an alteration stays in effect until changed again.
        steps = [({"VROW0": 0.05, "vrow1": -0.2}, (0.05, -0.2, 0.0)),
                 ({"i1": 1e-3}, (0.05, -0.2, 1e-3)),
                 ({"Vrow1": 1 / 3, "vrow0": 0.3}, (0.3, 1 / 3, 1e-3))]
        for changes, values in steps:
            circuit.alter(changes)
            result = circuit.run()
            assert isinstance(result, SimResult)
            assert result.backend == backend and result.attempts == 1
            assert list(result.vectors) == ["i(vrow0)", "i(vrow1)", "v(a)", "v(b)", "v(m)"]
            # The new values, exactly (the shared backend hands them over bit for bit).
            assert result["v(a)"][0] == pytest.approx(values[0], rel=1e-15)
            assert result["v(b)"][0] == pytest.approx(values[1], rel=1e-15)
            assert result["v(m)"][0] == pytest.approx(network_vm(*values), rel=1e-12)
            assert result["i(vrow0)"][0] == pytest.approx(
                -(values[0] - network_vm(*values)) / 1e3, rel=1e-9)
            fresh = reference.run(network_deck(*values), name="edited")
            assert list(fresh.vectors) == list(result.vectors)
            for key in fresh.vectors:
                np.testing.assert_allclose(result[key], fresh[key], rtol=1e-13, atol=1e-18)
        assert circuit.alterations == {"vrow0": 0.3, "vrow1": 1 / 3, "i1": 1e-3}


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_pwl_transient_gets_the_new_waveform(runners: dict[str, Runner], reference: Runner,
                                             backend: str) -> None:
    with runners[backend].load(RC_PWL, name="rc-pwl") as circuit:
        before = circuit.run()
        time, v_out = before["time"], before["v(out)"]
        assert np.max(np.abs(v_out - (1 - np.exp(-time / TAU_S)))) < RC_ABS_TOL_V

        # A 2 V step at 1 us instead of a 1 V step at 0 (more points than before).
        step = [0, 0, 1e-6, 0, 1e-6 + 1e-12, 2, 5e-6, 2]
        circuit.alter({"vin": step})
        after = circuit.run()
        time, v_out = after["time"], after["v(out)"]
        assert time[-1] == pytest.approx(5e-6, rel=1e-9)
        assert np.any(np.isclose(time, 1e-6, rtol=0, atol=1e-15))  # a breakpoint at 1 us
        expected = np.where(time > 1e-6, 2 * (1 - np.exp(-(time - 1e-6) / TAU_S)), 0.0)
        assert np.max(np.abs(v_out - expected)) < RC_ABS_TOL_V
        assert np.max(np.abs(after["v(in)"] - np.interp(time, step[0::2], step[1::2]))) \
            < 1e-9
        fresh = reference.run(RC_PWL.replace("PWL(0 0 1p 1 5u 1)",
                                             "PWL(0 0 1u 0 1.000001u 2 5u 2)"), name="edited")
        assert len(fresh["time"]) == len(time)
        for key in fresh.vectors:
            np.testing.assert_allclose(after[key], fresh[key], rtol=1e-9, atol=1e-12)

        # A PWL far longer than ngspice's 1024-character command line: every point lands.
        t = np.linspace(0, 5e-6, 400)
        wave = 0.5 + 0.25 * np.sin(t * 2e6)
        points = np.empty(2 * t.size)
        points[0::2], points[1::2] = t, wave
        circuit.alter({"VIN": points})
        long_run = circuit.run()
        assert np.max(np.abs(long_run["v(in)"] - np.interp(long_run["time"], t, wave))) < 1e-9


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_source_raises_netlist_error(runners: dict[str, Runner], backend: str) -> None:
    with runners[backend].load(NETWORK, name="network-9") as circuit:
        with pytest.raises(NetlistError, match=r"network-9.*'vrow7'.*vrow0, vrow1"):
            circuit.alter({"vrow0": 0.5, "vrow7": 1.0})
        with pytest.raises(NetlistError, match=r"'R1' is not an independent"):
            circuit.alter({"R1": 1.0})
        # Nothing of a rejected call was recorded.
        assert circuit.alterations == {}
        assert circuit.run()["v(a)"][0] == pytest.approx(1.0, rel=1e-15)


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value, message", [
    (float("nan"), "not finite"),
    (float("inf"), "not finite"),
    ([0, 0, 1e-6], "even number"),
    ([], "even number"),
    ([0, 0, 2e-6, 1, 1e-6, 2], "must not decrease"),
    ([0, 0, 1e-6, float("nan")], "non-finite"),
    ([0, "1"], "not a number"),
    ("1.0", "neither"),
    (True, "neither"),
    (None, "neither"),
])
def test_bad_values_raise_config_error(runners: dict[str, Runner], backend: str,
                                       value: object, message: str) -> None:
    with runners[backend].load(RC_PWL, name="rc") as circuit:
        with pytest.raises(ConfigError, match=rf"'vin'.*{message}"):
            circuit.alter({"vin": value})
        assert circuit.alterations == {}
        # Equal consecutive times (a step) are allowed.
        circuit.alter({"vin": [0, 0, 1e-6, 0, 1e-6, 1]})


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_use_after_invalidation_raises(runners: dict[str, Runner], backend: str) -> None:
    runner = runners[backend]
    first = runner.load(NETWORK, name="first")
    first.run()
    second = runner.load(RC_PWL, name="second")
    assert not first.valid and second.valid
    with pytest.raises(CircuitInvalidatedError,
                       match=r"first: .*another circuit \('second'\) was loaded"):
        first.run()
    with pytest.raises(CircuitSimError, match="Runner.load"):
        first.alter({"vrow0": 1.0})
    assert second.run()["time"][-1] == pytest.approx(5e-6)

    # A plain run drops the loaded circuit too; so does closing it or its runner.
    assert runner.run(NETWORK, name="plain")["v(a)"][0] == pytest.approx(1.0)
    with pytest.raises(CircuitInvalidatedError, match=r"Runner\.run\(\) was called"):
        second.run()
    third = runner.load(NETWORK, name="third")
    third.close()
    third.close()  # idempotent
    with pytest.raises(CircuitInvalidatedError, match="it was closed"):
        third.alter({"vrow0": 1.0})
    with Runner(SolverConfig(backend=backend)) as other:
        fourth = other.load(NETWORK, name="fourth")
    with pytest.raises(CircuitInvalidatedError, match="its runner was closed"):
        fourth.run()


@pytest.mark.spice
def test_close_removes_the_circuit_from_ngspice(runners: dict[str, Runner]) -> None:
    runner = runners["shared"]
    circuit = runner.load(NETWORK, name="network")
    assert runner._backend._worker is not None and runner._backend._worker.held is not None
    circuit.close()
    assert runner._backend._worker.held is None
    assert runner.run(NETWORK, name="after")["v(m)"][0] == pytest.approx(network_vm(1, 2, 0))


@pytest.mark.spice
def test_malformed_deck_is_rejected_at_load_or_run(runners: dict[str, Runner]) -> None:
    with pytest.raises(NetlistError, match=r"(?s)broken-3.*unknown subckt"):
        runners["shared"].load(MALFORMED, name="broken-3")  # parsed at once
    circuit = runners["batch"].load(MALFORMED, name="broken-4")  # only checked
    with pytest.raises(NetlistError, match=r"(?s)broken-4.*unknown subckt"):
        circuit.run()
    with pytest.raises(NetlistError, match=r"exactly one analysis"):
        runners["shared"].load("t\nV1 a 0 1\nR1 a 0 1\n.end\n", name="no-analysis")


@pytest.mark.spice
def test_survives_worker_recycling(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="circuitsim.runner"), \
            Runner(SolverConfig(recycle_after=1)) as runner:
        circuit = runner.load(NETWORK, name="network")
        assert _started(caplog) == 1
        circuit.alter({"vrow0": 0.25})
        assert circuit.run()["v(m)"][0] == pytest.approx(network_vm(0.25, 2, 0), rel=1e-12)
        circuit.alter({"i1": -2e-4})  # vrow0 must still be 0.25 after the next reload
        assert circuit.run()["v(m)"][0] == pytest.approx(network_vm(0.25, 2, -2e-4), rel=1e-12)
        assert circuit.run()["v(a)"][0] == pytest.approx(0.25, rel=1e-15)
        assert _started(caplog) == 4  # every re-run got a fresh worker and a reload
        reloads = [r for r in caplog.records if "loading the deck into" in r.message]
        assert len(reloads) == 3


@pytest.mark.spice
def test_resolves_reuse_the_worker_and_memory_stays_flat() -> None:
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc to read the worker's memory")

    def rss_kib(pid: int) -> int:
        text = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]

    with Runner(SolverConfig(recycle_after=10**6)) as runner:
        circuit = runner.load(RC_PWL.replace(".tran 10n 5u", ".tran 50n 5u"), name="rc")
        assert runner._backend._worker is not None
        pid = runner._backend._worker.pid
        for k in range(60):
            circuit.alter({"vin": [0, 0, 1e-6, 0.01 * (k % 7)]})
            circuit.run()
        warm = rss_kib(pid)
        for k in range(300):
            circuit.alter({"vin": [0, 0, 1e-6, 0.01 * (k % 7)], "vin ": 0.1 * k})
            result = circuit.run()
        assert runner._backend._worker.pid == pid  # no reload, no restart
        assert result["v(in)"][-1] == pytest.approx(0.01 * (299 % 7))
        grown = rss_kib(pid) - warm
        assert grown < 2048, f"the worker grew by {grown} KiB over 300 re-solves"


@pytest.mark.spice
@pytest.mark.parametrize("backend", BACKENDS)
def test_convergence_aids_apply_to_re_solves(backend: str) -> None:
    with Runner(SolverConfig(backend=backend, retries=2)) as runner:
        circuit = runner.load(FLOATING, name="floating")
        result = circuit.run()
        assert result.attempts == 3
        assert result["v(n)"][0] == pytest.approx(1.0)  # I * rshunt
        circuit.alter({"i1": 2e-12})
        result = circuit.run()  # starts again without aids, then retries with them
        assert result.attempts == 3
        assert "rshunt=1e12" in result.log
        assert result["v(n)"][0] == pytest.approx(2.0)


@pytest.mark.spice
def test_timeout_kill_reloads_transparently() -> None:
    # 100,000 PWL breakpoints 50 ps apart force ~1e5 time steps: far beyond the limit.
    t = np.arange(100_000) * 50e-12
    busy = np.empty(2 * t.size)
    busy[0::2], busy[1::2] = t, (np.arange(t.size) % 2).astype(float)
    with Runner() as runner:
        circuit = runner.load(RC_PWL, name="rc")
        circuit.alter({"vin": [0, 0, 1e-12, 0.5, 5e-6, 0.5]})
        assert circuit.run()["v(out)"][-1] == pytest.approx(0.5 * SETTLED, rel=1e-3)
        pid = runner._backend._worker.pid if runner._backend._worker else None
        circuit.alter({"vin": busy})
        with pytest.raises(SimulationTimeout, match=r"rc.*killed"):
            circuit.run(timeout_s=0.5)
        circuit.alter({"vin": [0, 0, 1e-12, 1.5, 5e-6, 1.5]})
        result = circuit.run()
        assert runner._backend._worker is not None and runner._backend._worker.pid != pid
        assert result["v(out)"][-1] == pytest.approx(1.5 * SETTLED, rel=1e-3)


# ------------------------------------------------------------------------------------
# Without ngspice
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, dc, pwl, expected", [
    ("V1 in 0 DC 3", 0.25, None, "V1 in 0 dc 0.25"),
    ("V1 in 0 3 AC 1", 0.25, None, "V1 in 0 dc 0.25 AC 1"),
    ("V1 in 0 3 AC 1", None, [0, 1], "V1 in 0 3 AC 1 pwl(0.0 1.0)"),
    ("Vin in 0 DC 0.5 PWL(0 0 1u 1) r=0 ; note", None, [0, 1, 1e-6, 2],
     "Vin in 0 DC 0.5 pwl(0.0 1.0 1e-06 2.0) r=0"),
    ("vin a b pulse (0 1 0 1n 1n 1u 2u) ac 1 0", 7, [0, 1],
     "vin a b dc 7.0 pwl(0.0 1.0) ac 1 0"),
    ("I1 0 n {ival}", 1e-3, None, "I1 0 n dc 0.001"),
    ("V2 a 0", None, [0, 0.5], "V2 a 0 pwl(0.0 0.5)"),
    ("V3 a 0 dc=2 sin(0 1 1k)", 0.5, None, "V3 a 0 dc 0.5 sin(0 1 1k)"),
    ("V4 a 0 'x*2' $ comment", -1.5, None, "V4 a 0 dc -1.5"),
])
def test_batch_rewrites_source_lines(line: str, dc: float | None, pwl: list[float] | None,
                                     expected: str) -> None:
    assert deck_module._edit_source_line(line, dc, pwl, "deck") == expected


def test_batch_rewrite_refuses_functions_without_parentheses() -> None:
    with pytest.raises(NetlistError, match="parentheses"):
        deck_module._edit_source_line("V1 a 0 pwl 0 0 1 1", None, [0, 1], "deck")


def test_sources_are_found_outside_subcircuits_only() -> None:
    deck = deck_module._prepare(
        "t\nV1 a 0 1\n+ AC 1\n* note\nI2 0 a 1m\n.subckt s x\nVs x 0 1\n.ends\nR1 a 0 1\n"
        "X1 a s\n.op\n.end\n", "t")
    sources, elements = deck_module._deck_elements(deck)
    assert sorted(sources) == ["i2", "v1"]
    assert (sources["v1"].start, sources["v1"].stop) == (1, 3)
    assert elements == {"v1", "i2", "r1", "x1"}
