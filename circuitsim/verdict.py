"""What one solve produced, and the verdict on it.

A backend turns what ngspice left (the plot's vectors, its output, its exit status) into
an :class:`_Outcome`, with the vector names normalized by :func:`_canonical` and put in
order by :func:`_ordered` (the names of :mod:`circuitsim.runner`'s module docstring).
:func:`_judge` says what the outcome is ("How success is judged" there): ``ok``,
``netlist`` (ngspice's lines that reject the deck, :func:`_rejection`), ``convergence``
(worth a retry with convergence aids) or ``other``. :func:`_clean_log` makes the output of
``ngspice -b`` read like the shared backend's log.

Nothing here runs ngspice; the message markers are those of ngspice 46.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

from circuitsim.deck import _Deck
from netlists.errors import SimulatorError


# --------------------------------------------------------------------------------------
# Names and verdicts
# --------------------------------------------------------------------------------------

_WRAPPED = re.compile(r"[vi]\((.+)\)")


def _canonical(name: str, vtype: str | None = None) -> str:
    """The normalized name of a vector (see the module docstring).

    ``vtype`` is given for libngspice's bare names (``out``, ``v1#branch``), which are first
    wrapped the way ngspice's raw-file writer wraps them (``v(out)``, ``i(v1)``); raw-file
    names arrive already wrapped. Sweep scales and ``@device[param]`` vectors are unwrapped.
    """
    text = name.strip().lower()
    if vtype is not None:
        if text.endswith("#branch"):
            text = f"i({text[:-len('#branch')]})"
        elif vtype == "voltage":
            text = f"v({text})"
        elif vtype == "current":
            text = f"i({text})"
    match = _WRAPPED.fullmatch(text)
    if match and (match.group(1).endswith("-sweep") or match.group(1).startswith("@")):
        text = match.group(1)
    return text


def _is_scale(name: str) -> bool:
    return name == "time" or name.endswith("-sweep")


def _ordered(pairs: Iterator[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Scale first, then the rest sorted; duplicate names are an error (never overwritten)."""
    found: dict[str, np.ndarray] = {}
    for name, values in pairs:
        if name in found:
            raise SimulatorError(f"two vectors normalize to the same name {name!r}")
        found[name] = np.asarray(values, dtype=np.float64)
    keys = sorted(found, key=lambda key: (not _is_scale(key), key))
    return {key: found[key] for key in keys}


# Lines that mean ngspice rejected the deck itself (seen on ngspice 46).
_NETLIST_MARKERS = re.compile(
    "|".join([
        r"circuit not parsed",
        r"there aren't any circuits loaded",
        r"error on line",
        r"error in netlist line",
        r"undefined parameter",
        r"unknown subckt",
        r"could not find a valid modelname",
        r"unable to find definition of model",
        r"can't find model",
        r"no such function",
        r"syntax error",
        r"cannot recover",
        r"device already exists",
        r"no data saved",
        r"no such device",
        r"is not in the circuit",
        r"not a valid .* instance line",
        r"no such parameter",
    ]),
    re.IGNORECASE)

# Lines that mean the Newton iteration or the time stepping failed.
_CONVERGENCE_MARKERS = re.compile(
    "|".join([
        r"timestep too small",
        r"singular matrix",
        r"iteration limit",
        r"gmin stepping failed",
        r"source stepping failed",
        r"could not be simulated successfully",
        r"dc solution failed",
        r"transient op failed",
        r"no convergence",
        r"too many iterations",
    ]),
    re.IGNORECASE)

_ABORTED = re.compile(r"simulation\(s\) aborted", re.IGNORECASE)


@dataclass
class _Outcome:
    """What one backend call produced, before it is judged."""

    vectors: dict[str, np.ndarray] | None  # normalized; None when no plot was produced
    log: str
    seconds: float
    exit_status: int | None = None  # batch only
    problem: str = ""  # a backend-level reason the data is unusable


def _data_problem(vectors: Mapping[str, np.ndarray] | None, deck: _Deck) -> str:
    """Why the produced data is not a complete result (empty when it is)."""
    if not vectors:
        return "the analysis produced no plot"
    lengths = {len(values) for values in vectors.values()}
    if lengths == {0}:
        return "the analysis produced no data points"
    if len(lengths) != 1:
        return f"the vectors have unequal lengths {sorted(lengths)}"
    if deck.analysis == "op" and lengths != {1}:
        return f"the operating point has {lengths.pop()} points instead of 1"
    bad = [name for name, values in vectors.items() if not np.all(np.isfinite(values))]
    if bad:
        return f"non-finite values in {', '.join(bad[:5])}"
    if deck.analysis == "tran" and deck.tstop is not None and "time" in vectors:
        reached = float(vectors["time"][-1])
        if reached < deck.tstop * (1.0 - 1e-6):
            return f"the transient stopped at t = {reached:.6g} s before tstop = {deck.tstop:g} s"
    return ""


def _rejection(lines: Sequence[str]) -> str:
    """ngspice's lines that say the deck is malformed (empty when there are none)."""
    rejected: list[str] = []
    for index, line in enumerate(lines):
        if _NETLIST_MARKERS.search(line):
            rejected.append(line.strip())
            # "Error on line 4 or its substitute:" and "can't find model 'x' from line"
            # are followed by the offending netlist line.
            if index + 1 < len(lines) and re.search(r"(:|from line)\s*$", line):
                rejected.append(lines[index + 1].strip())
    return "\n".join(dict.fromkeys(rejected))


def _judge(outcome: _Outcome, deck: _Deck) -> tuple[str, str]:
    """``("ok" | "netlist" | "convergence" | "other", detail)`` for one outcome."""
    lines = outcome.log.splitlines()
    rejected = _rejection(lines)
    if rejected:
        return "netlist", rejected
    problem = outcome.problem or _data_problem(outcome.vectors, deck)
    numeric = bool(problem) and outcome.vectors is not None and not outcome.problem
    if not problem and any(_ABORTED.search(line) for line in lines):
        problem = "ngspice aborted the analysis"
    if outcome.exit_status not in (None, 0):
        status = f"ngspice exited with status {outcome.exit_status}"
        problem = f"{problem} ({status})" if problem else status
    if not problem:
        return "ok", ""
    trouble = [line.strip() for line in lines if _CONVERGENCE_MARKERS.search(line)]
    if trouble or numeric:
        detail = problem
        if trouble:
            detail += ": " + "; ".join(list(dict.fromkeys(trouble))[-3:])
        return "convergence", detail
    return "other", problem


# Resource statistics that ``ngspice -b`` prints at exit, and its transient progress
# redraws ("Reference value : ..."); dropped so that batch and shared
# logs read alike and an error's log tail shows ngspice's messages, not memory sizes.
_BATCH_STATS = re.compile(
    r"^\s*(total analysis time|total elapsed time|total dram available|dram currently "
    r"available|maximum ngspice program size|current ngspice program size|shared ngspice "
    r"pages|text \(code\) pages|stack =|library pages|reference value)", re.IGNORECASE)


def _clean_log(data: bytes) -> str:
    """Batch output as text: no blank lines, no progress redraws, no resource statistics."""
    lines = (line.split("\r")[-1].rstrip()
             for line in data.decode("utf-8", "replace").splitlines())
    return "\n".join(line for line in lines if line.strip() and not _BATCH_STATS.match(line))
