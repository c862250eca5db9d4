"""The write-and-verify controller (circuitsim.write_policy) against the procedure as written
out: a per-device loop over random verify reads, with its own counters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from circuitsim.write_policy import OUTCOMES, Outcome, Phase, Ramp, State, WritePolicy
from netlists.config import HardwareConfig, preset
from netlists.errors import ConfigError

CAPS = [{}, {"max_rounds": 3, "max_pulses_per_phase": 4, "max_floor_pulses": 2},
        {"max_rounds": 1, "max_pulses_per_phase": 1, "max_floor_pulses": 0}]


def _policy(**write_verify) -> WritePolicy:
    return WritePolicy.of(preset("chip").replace(write_verify=write_verify))


def _procedure(hw: HardwareConfig, reads: list[float], lo: float, hi: float,
               floor: float) -> dict:
    """The procedure of the module docstring, one device, fed verify reads in turn: the
    pulses it asks for and its counters."""
    wv, drv = hw.write_verify, hw.drive
    reads = iter(reads)
    st = {"pulses": [], "floor": 0, "set": 0, "reset": 0, "rounds": 0}

    def pulse(kind: str, amp: float) -> float:
        st["pulses"].append((kind, amp))
        return next(reads)

    def rounds(g: float) -> None:
        while not lo <= g <= hi and st["rounds"] < wv.max_rounds:
            st["rounds"] += 1
            if g < lo:  # adaptive SET
                amp = drv.v_set_min_v
                for k in range(wv.max_pulses_per_phase):
                    g = pulse("set", amp)
                    st["set"] += 1
                    if g >= lo:
                        break
                    amp = min(amp + wv.set_step_v, drv.v_set_max_v)
                if g < lo:
                    continue
                if g <= hi:
                    return
            amp = drv.v_reset_min_v  # adaptive RESET
            for k in range(wv.max_pulses_per_phase):
                g = pulse("reset", amp)
                st["reset"] += 1
                if g <= hi:
                    break
                amp = min(amp + wv.reset_step_v, drv.v_reset_max_v)

    g = next(reads)
    while g > floor and st["floor"] < wv.max_floor_pulses:
        g = pulse("reset", drv.v_reset_max_v)
        st["floor"] += 1
    rounds(g)
    return st


def _run(policy: WritePolicy, reads: list[float], lo: float, hi: float, floor: float
         ) -> dict:
    """The policy driven by the same reads."""
    reads = iter(reads)
    st = {"pulses": [], "floor": 0, "set": 0, "reset": 0, "rounds": 0}
    code = policy.start
    while code != policy.done:
        pulse = policy.pulse(code)
        if pulse is not None:
            st["pulses"].append((pulse.kind, pulse.amplitude_v))
            st[pulse.phase.name.lower()] += 1
        move = policy.next(code, Outcome.of(next(reads), lo, hi, floor))
        code, st["rounds"] = move.code, st["rounds"] + move.new_round
    return st


@pytest.mark.parametrize("caps", CAPS)
def test_the_policy_is_the_procedure(caps):
    policy = _policy(**caps)
    hw = preset("chip").replace(write_verify=caps)
    rng = np.random.default_rng(5)
    lo, hi, floor = 10.0, 11.0, 2.0
    for trial in range(400):
        # reads that wander: around the band, the floor and beyond, in runs
        centre = rng.choice([1.0, 5.0, 10.5, 20.0, 10.0, 11.0, 2.0])
        reads = list(centre + rng.normal(0, rng.choice([0.3, 3.0, 8.0]), policy.codes + 2))
        if trial % 7 == 0:
            reads = [float(rng.choice([lo, hi, floor])) for _ in reads]  # on a threshold
        want = _procedure(hw, reads, lo, hi, floor)
        assert _run(policy, reads, lo, hi, floor) == want, trial
        assert len(want["pulses"]) <= policy.max_pulses


@pytest.mark.parametrize("caps", CAPS)
def test_codes_and_states_round_trip(caps):
    policy = _policy(**caps)
    seen = {policy.state(code) for code in range(policy.codes)}
    assert len(seen) == policy.codes
    for code in range(policy.codes):
        assert policy.code(policy.state(code)) == code
    phases = [policy.state(code).phase for code in range(policy.codes)]
    assert phases.count(Phase.FLOOR) == policy.max_floor_pulses
    assert phases.count(Phase.SET) == phases.count(Phase.RESET) \
        == policy.max_rounds * policy.max_pulses_per_phase
    assert policy.state(policy.start).phase is Phase.START
    assert policy.state(policy.done).phase is Phase.DONE
    assert policy.pulse(policy.start) is None and policy.pulse(policy.done) is None
    following, new_round = policy.table
    assert following.shape == new_round.shape == (policy.codes, len(OUTCOMES))
    assert np.all(following[policy.done] == policy.done) and not new_round[policy.done].any()
    assert not following.flags.writeable


def test_outcomes():
    assert [o.index for o in OUTCOMES] == list(range(6))
    assert Outcome.of(9.9, 10, 11, 2) == Outcome(-1, True)
    assert Outcome.of(10, 10, 11, 2) == Outcome(0, True)
    assert Outcome.of(11, 10, 11, 2) == Outcome(0, True)
    assert Outcome.of(11.1, 10, 11, 12) == Outcome(1, False)
    assert Outcome.of(2, 10, 11, 2) == Outcome(-1, False)


def test_ramps_and_pulses_follow_the_hardware():
    hw = preset("chip")
    policy = WritePolicy.of(hw)
    drv = hw.drive
    assert policy.set_ramp.values[0] == drv.v_set_min_v
    assert policy.set_ramp.values[-1] == drv.v_set_max_v
    assert len(policy.reset_ramp.values) == hw.write_verify.max_pulses_per_phase
    assert Ramp(1.0, 0.5, 2.2, 5).values == (1.0, 1.5, 2.0, 2.2, 2.2)
    first_set = policy.code(State(Phase.SET, 2, 3))
    pulse = policy.pulse(first_set)
    assert (pulse.kind, pulse.phase, pulse.index) == ("set", Phase.SET, 3)
    assert pulse.amplitude_v == policy.set_ramp.values[3]
    floor = policy.pulse(0)
    assert (floor.kind, floor.amplitude_v) == ("reset", drv.v_reset_max_v)


def test_thresholds_follow_the_levels():
    window = (4e-6, 40e-6)
    policy = _policy(tolerance_levels=0.25, floor_levels=2.0)
    spacing = (40e-6 - 4e-6) / 127
    assert policy.thresholds(window) == (0.25 * spacing, 4e-6 + 2.0 * spacing)
    hw = preset("chip").replace(levels={"count": 4, "g_min_us": 8.2, "g_max_us": 32.9})
    tol, floor = WritePolicy.of(hw).thresholds(window)
    assert tol == pytest.approx(0.5 * (32.9 - 8.2) / 3 * 1e-6)
    assert floor == pytest.approx((8.2 + (32.9 - 8.2) / 3) * 1e-6)
    with pytest.raises(ConfigError, match="levels window"):
        WritePolicy.of(hw).thresholds((10e-6, 40e-6))


def test_bad_policies_and_codes_are_refused():
    policy = _policy()
    with pytest.raises(ConfigError, match="code = 262 must be a whole number in"):
        policy.state(policy.codes)
    with pytest.raises(ConfigError, match="code = True"):
        policy.pulse(True)
    with pytest.raises(ConfigError, match="not a state of this policy"):
        policy.code(State(Phase.SET, 3, 0))
    with pytest.raises(ConfigError, match="max_rounds = 0"):
        dataclasses.replace(policy, max_rounds=0)
    with pytest.raises(ConfigError, match="must hold max_pulses_per_phase = 61"):
        dataclasses.replace(policy, max_pulses_per_phase=61)
    with pytest.raises(ConfigError, match="at most 65536"):
        dataclasses.replace(policy, max_floor_pulses=70000)
    with pytest.raises(ConfigError, match="must be a HardwareConfig"):
        WritePolicy.of(policy)
