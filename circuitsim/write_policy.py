"""The write-and-verify controller: which pulse a device gets next and when it is done.

One policy, two drivers: :func:`circuitsim.write_verify.write_verify` applies its pulses in
ngspice, :class:`surrogate.program_model.ProgrammingModel` on the calibrated pulse response.
Only the pulse's effect differs; what the controller decides from each verify read is this
module's alone.

The procedure (the paper's, Wu et al., Adv. Mater. 2023), per device, with the band ``[lo,
hi] = [target - tolerance, target + tolerance]`` and the floor level ``floor`` (both from
:meth:`WritePolicy.thresholds`); "pulse" means one write pulse of ``drive.t_write_s``
followed by a verify read:

0. *Verify read* of the starting state (no pulse): the ``START`` code.
1. *Reset to floor*: while the read is above ``floor``, RESET pulses at
   ``drive.v_reset_max_v`` (gate ``drive.v_gate_reset_v``), at most ``max_floor_pulses``.
2. *Rounds* (at most ``max_rounds``). A round starts with a verify decision: within the band
   -> done.

   * *Adaptive SET* (below ``lo``): amplitudes ``drive.v_set_min_v``, then each
     ``set_step_v`` higher up to ``drive.v_set_max_v`` (gate ``drive.v_gate_set_v``). A read
     in the band -> done; above ``hi`` (overshoot) -> adaptive RESET in the same round;
     after ``max_pulses_per_phase`` pulses still below ``lo`` the round ends.
   * *Adaptive RESET* (after an overshoot, or at once if the round starts above ``hi``):
     amplitudes from ``drive.v_reset_min_v`` by ``reset_step_v`` up to
     ``drive.v_reset_max_v``. A read at or below ``hi`` (in the band, or an undershoot)
     ends the round, and so do ``max_pulses_per_phase`` pulses.

   A round that ends without success starts the next one; after ``max_rounds`` rounds the
   device is done without success, its conductance its last verify read.

A device's place in the procedure is a whole number, its *code*: ``f`` in ``[0,
max_floor_pulses)`` is the floor phase after ``f`` pulses; then for each round ``r = 1 ..
max_rounds`` come ``max_pulses_per_phase`` SET codes and as many RESET codes, by the pulses
so far in the phase (which fix the amplitude); then ``START`` and ``DONE``. A verify read's
:class:`Outcome` is its place against the band and the floor. :meth:`WritePolicy.next` maps
(code, outcome) to the next code; the whole map is one vectorized table
(:attr:`WritePolicy.table`), which the surrogate's loops use as it is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from netlists.config import (MAX_PULSES_PER_WRITE, HardwareConfig, LevelsParams,
                             WriteVerifyParams)
from netlists.errors import ConfigError

__all__ = ["Phase", "Outcome", "OUTCOMES", "Ramp", "Pulse", "State", "Transition",
           "WritePolicy"]


class Phase(enum.IntEnum):
    """What a code stands for (the pulse counter its pulse adds to, for the first three)."""

    FLOOR = 0
    SET = 1
    RESET = 2
    START = 3
    DONE = 4


@dataclass(frozen=True)
class Outcome:
    """A verify read's place: ``band`` -1 below ``lo``, 0 within ``[lo, hi]``, +1 above
    ``hi``; ``above_floor`` when the read exceeds the floor level."""

    band: int
    above_floor: bool

    @classmethod
    def of(cls, read: float, lo: float, hi: float, floor: float) -> Outcome:
        return cls(band=-1 if read < lo else 1 if read > hi else 0,
                   above_floor=bool(read > floor))

    @property
    def index(self) -> int:
        """Its column in :attr:`WritePolicy.table`."""
        return 2 * (self.band + 1) + int(self.above_floor)


#: Every outcome, in column order.
OUTCOMES: tuple[Outcome, ...] = tuple(Outcome(band, above) for band in (-1, 0, 1)
                                      for above in (False, True))


@dataclass(frozen=True)
class Ramp:
    """An adaptive phase's amplitudes: ``first_v``, then ``min(previous + step_v, top_v)``,
    ``length`` of them."""

    first_v: float
    step_v: float
    top_v: float
    length: int

    @cached_property
    def values(self) -> tuple[float, ...]:
        """The amplitudes, V, summed in Python floats (the ngspice driver's numbers; the
        surrogate sums the same steps in its own dtype)."""
        amp = [float(self.first_v)]
        for _ in range(self.length - 1):
            amp.append(min(amp[-1] + self.step_v, self.top_v))
        return tuple(amp)


@dataclass(frozen=True)
class Pulse:
    """The write pulse of a code: ``kind`` "set" or "reset", the ``phase`` it counts in,
    and its place ``index`` in that phase (the amplitude is the ramp's ``index``-th)."""

    kind: str
    phase: Phase
    amplitude_v: float
    index: int


@dataclass(frozen=True)
class State:
    """A code spelled out: the phase, the round (0 before the first, in the floor phase and
    at START) and the pulses so far in the phase."""

    phase: Phase
    round: int
    pulses: int


@dataclass(frozen=True)
class Transition:
    """The next code, and whether a new round started on the way."""

    code: int
    new_round: bool


@dataclass(frozen=True)
class WritePolicy:
    """The controller of one hardware configuration: its levels (for the thresholds), its
    limits and ramps. Build it with :meth:`of`."""

    levels: LevelsParams
    tolerance_levels: float
    floor_levels: float
    max_rounds: int
    max_pulses_per_phase: int
    max_floor_pulses: int
    floor_v: float
    set_ramp: Ramp
    reset_ramp: Ramp

    def __post_init__(self) -> None:
        # the fields of `of`, validated in WriteVerifyParams; a policy changed by hand
        # (dataclasses.replace) is held to the same bounds
        for name, lo in (("max_rounds", 1), ("max_pulses_per_phase", 1),
                         ("max_floor_pulses", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"WritePolicy.{name} = {value!r} must be a whole number "
                                  f">= {lo}")
        if self.max_pulses > MAX_PULSES_PER_WRITE:
            raise ConfigError(f"WritePolicy allows {self.max_pulses} pulses a device: at "
                              f"most {MAX_PULSES_PER_WRITE}")
        for ramp in (self.set_ramp, self.reset_ramp):
            if ramp.length != self.max_pulses_per_phase:
                raise ConfigError(f"{ramp} must hold max_pulses_per_phase = "
                                  f"{self.max_pulses_per_phase} amplitudes")

    @classmethod
    def of(cls, hw: HardwareConfig) -> WritePolicy:
        """The policy ``hw.levels``, ``hw.write_verify`` and ``hw.drive`` describe."""
        if not isinstance(hw, HardwareConfig):
            raise ConfigError(f"hw = {hw!r} must be a HardwareConfig")
        wv: WriteVerifyParams = hw.write_verify
        drv = hw.drive
        length = wv.max_pulses_per_phase
        return cls(levels=hw.levels, tolerance_levels=wv.tolerance_levels,
                   floor_levels=wv.floor_levels, max_rounds=wv.max_rounds,
                   max_pulses_per_phase=length, max_floor_pulses=wv.max_floor_pulses,
                   floor_v=drv.v_reset_max_v,
                   set_ramp=Ramp(drv.v_set_min_v, wv.set_step_v, drv.v_set_max_v, length),
                   reset_ramp=Ramp(drv.v_reset_min_v, wv.reset_step_v, drv.v_reset_max_v,
                                   length))

    # ---- thresholds ---------------------------------------------------------------------

    def thresholds(self, cell_window_s: tuple[float, float]) -> tuple[float, float]:
        """``(tolerance, floor)`` in S for a cell whose read window is ``cell_window_s``:
        ``tolerance_levels`` level spacings, and the lowest level plus ``floor_levels``
        spacings."""
        spacing = self.levels.spacing(cell_window_s)
        return (self.tolerance_levels * spacing,
                self.levels.window(cell_window_s)[0] + self.floor_levels * spacing)

    # ---- codes --------------------------------------------------------------------------

    @property
    def start(self) -> int:
        """The code before the first verify read."""
        return self.max_floor_pulses + 2 * self.max_rounds * self.max_pulses_per_phase

    @property
    def done(self) -> int:
        return self.start + 1

    @property
    def codes(self) -> int:
        return self.start + 2

    @property
    def max_pulses(self) -> int:
        """The most write pulses one device can receive."""
        return self.start

    def state(self, code: int) -> State:
        """What ``code`` stands for."""
        code = self._checked(code)
        if code < self.max_floor_pulses:
            return State(Phase.FLOOR, 0, code)
        if code == self.start:
            return State(Phase.START, 0, 0)
        if code == self.done:
            return State(Phase.DONE, 0, 0)
        block, pulses = divmod(code - self.max_floor_pulses, self.max_pulses_per_phase)
        return State(Phase.RESET if block % 2 else Phase.SET, block // 2 + 1, pulses)

    def code(self, state: State) -> int:
        """The code of ``state`` (the inverse of :meth:`state`)."""
        if state.phase is Phase.START:
            return self.start
        if state.phase is Phase.DONE:
            return self.done
        if state.phase is Phase.FLOOR:
            if not 0 <= state.pulses < self.max_floor_pulses:
                raise ConfigError(f"{state} is not a state of this policy")
            return state.pulses
        if not (1 <= state.round <= self.max_rounds
                and 0 <= state.pulses < self.max_pulses_per_phase):
            raise ConfigError(f"{state} is not a state of this policy")
        block = 2 * (state.round - 1) + (state.phase is Phase.RESET)
        return self.max_floor_pulses + block * self.max_pulses_per_phase + state.pulses

    def pulse(self, code: int) -> Pulse | None:
        """The write pulse a device at ``code`` gets before its next verify read (None at
        START and DONE)."""
        state = self.state(code)
        if state.phase is Phase.FLOOR:
            return Pulse("reset", Phase.FLOOR, self.floor_v, state.pulses)
        if state.phase is Phase.SET:
            return Pulse("set", Phase.SET, self.set_ramp.values[state.pulses], state.pulses)
        if state.phase is Phase.RESET:
            return Pulse("reset", Phase.RESET, self.reset_ramp.values[state.pulses],
                         state.pulses)
        return None

    def next(self, code: int, outcome: Outcome) -> Transition:
        """Where a device at ``code`` goes after its pulse and a verify read of
        ``outcome``."""
        code = self._checked(code)
        following, new_round = self.table
        return Transition(int(following[code, outcome.index]),
                          bool(new_round[code, outcome.index]))

    @cached_property
    def phases(self) -> np.ndarray:
        """Per code, its :class:`Phase` (int64)."""
        return np.array([self.state(c).phase for c in range(self.codes)], dtype=np.int64)

    @cached_property
    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole controller: ``following[code, outcome.index]`` (int64) and
        ``new_round[code, outcome.index]`` (bool), each of shape ``(codes, 6)``."""
        floor_n, phase_n, rounds_n = (self.max_floor_pulses, self.max_pulses_per_phase,
                                      self.max_rounds)
        per_round = 2 * phase_n
        start, done = self.start, self.done
        code = np.arange(self.codes)[:, None]
        kind = self.phases[:, None]
        block, pulses = np.divmod(code - floor_n, phase_n)
        pulses = np.where(kind == Phase.FLOOR, code, pulses)
        in_round = (kind == Phase.SET) | (kind == Phase.RESET)
        rounds = np.where(in_round, block // 2 + 1, 0)
        band = np.array([o.band for o in OUTCOMES])[None, :]
        low = ~np.array([o.above_floor for o in OUTCOMES])[None, :]
        below, above = band < 0, band > 0
        # a round begins: done within the band or out of rounds, else SET or RESET
        ends = (band == 0) | (rounds >= rounds_n)
        first = floor_n + rounds * per_round
        round_to = np.where(ends, done, np.where(below, first, first + phase_n))
        last = pulses + 1
        starts = (((kind == Phase.FLOOR) & (low | (last >= floor_n)))
                  | ((kind == Phase.SET) & below & (last >= phase_n))
                  | ((kind == Phase.RESET) & (~above | (last >= phase_n)))
                  | ((kind == Phase.START) & (low | (floor_n == 0))))
        # a SET that reaches lo: done in the band, the round's RESET phase above it
        reached = np.where(above, code - pulses + phase_n, done)
        following = np.select(
            [starts, kind == Phase.DONE, kind == Phase.START, (kind == Phase.SET) & ~below],
            [round_to, done, 0, reached], code + 1)
        following, new_round = (np.broadcast_to(a, (self.codes, len(OUTCOMES))).copy()
                                for a in (following, starts & ~ends))
        for array in (following, new_round):
            array.setflags(write=False)
        return following, new_round

    def _checked(self, code: int) -> int:
        if isinstance(code, bool) or not isinstance(code, (int, np.integer)) \
                or not 0 <= code < self.codes:
            raise ConfigError(f"code = {code!r} must be a whole number in [0, {self.codes})")
        return int(code)
