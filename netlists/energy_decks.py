"""Decks for energy accounting: the tile read and the cell pulse decks with source currents saved.

Pure functions. They render the existing decks (``netlists.array.render_tile_deck``,
``netlists.programming.render_pulse_deck``) unchanged and add ``.save`` cards for the voltage
and branch current of every independent source, so that the energy each source delivers,
``E = -integral v(node) i(source) dt`` (ngspice's ``i(V)`` flows into the source's ``+``
node, through the source: a source that delivers power has ``v * i < 0``), can be integrated
over the transient. Every independent source in these decks has its ``-`` node at ground.

Relies on: several ``.save`` cards in one deck add up (ngspice), ``i(<vsource>)`` names a
voltage source's branch current.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from netlists.array import render_tile_deck
from netlists.config import HardwareConfig, SolverConfig
from netlists.errors import ConfigError, NetlistError
from netlists.periphery import TIA_SUPPLY_NODES, TIA_SUPPLY_SOURCES
from netlists.programming import T_GAP_S, Pulse, render_pulse_deck

__all__ = [
    "add_saves",
    "vmm_sources",
    "driver_nodes",
    "render_vmm_energy_deck",
    "PULSE_SOURCES",
    "PulseEnergyDeck",
    "render_pulse_energy_deck",
]

#: (source, node) of the pulse deck's drivers: bit line, word line, source line.
PULSE_SOURCES = (("vbl", "bl"), ("vwl", "wl"), ("vsl", "sl"))


def add_saves(deck: str, vectors: Sequence[str], per_line: int = 16) -> str:
    """``deck`` with ``.save`` cards for ``vectors`` inserted before its final ``.end``."""
    head, sep, tail = deck.rpartition("\n.end")
    if not sep or tail.strip():
        raise NetlistError("the deck does not end with a .end card")
    vectors = list(vectors)
    lines = [".save " + " ".join(vectors[k:k + per_line])
             for k in range(0, len(vectors), per_line)]
    return head + "\n" + "\n".join(lines) + sep + tail


def vmm_sources(hw: HardwareConfig) -> dict[str, list[tuple[str, str]]]:
    """The tile read deck's independent sources as (source, node), by group:
    ``row`` (drivers ``Vrow<i>`` at ``in<i>``), ``wordline`` (``Vwl``), ``clock``
    (the front-end's clock phases, which drive behavioural switches) and ``tia_supply``
    (the TIAs' upper and lower supplies)."""
    return {
        "row": [(f"vrow{i}", f"in{i}") for i in range(hw.array.rows)],
        "wordline": [("vwl", "wl")],
        "clock": [("vphir", "phir"), ("vphi1", "phi1"), ("vphi2", "phi2")],
        "tia_supply": [(src.lower(), node)
                       for src, node in zip(TIA_SUPPLY_SOURCES, TIA_SUPPLY_NODES)],
    }


def driver_nodes(hw: HardwareConfig) -> list[tuple[str, str]] | None:
    """Each row driver's two ends (``in<i>``, ``rin<i>``) across ``r_driver_ohm``, or None
    when that resistance is 0 (the nodes are merged and nothing is lost in the driver)."""
    if hw.array.r_driver_ohm == 0:
        return None
    return [(f"in{i}", f"rin{i}") for i in range(hw.array.rows)]


def render_vmm_energy_deck(hw: HardwareConfig, states: object, x: object, *,
                           solver: SolverConfig | None = None, name: str = "vmm_energy") -> str:
    """The bit-serial tile read of :func:`netlists.array.render_tile_deck`, unchanged, with
    the voltage and current of every independent source saved, every TIA input
    ``v(tin<j>)`` (the column current is ``(v(tin) - v(tout)) / R_f``) and the inner end of
    every row driver's resistance (``v(rin<i>)``, :func:`driver_nodes`)."""
    deck = render_tile_deck(hw, states, x, solver=solver, name=name)
    saves = [vec for group in vmm_sources(hw).values() for src, node in group
             for vec in (f"v({node})", f"i({src})")]
    saves += [f"v(tin{j})" for j in range(hw.array.cols)]
    saves += [f"v({inner})" for _, inner in driver_nodes(hw) or []]
    return add_saves(deck, saves)


@dataclass(frozen=True)
class PulseEnergyDeck:
    """The deck and the window that holds the write pulse and nothing else:
    ``[t_start_s, t_stop_s]`` runs from the end of the read before the pulse to the start of
    the read after it. ``read_times_s``: where the two reads' currents are sampled."""

    text: str
    t_start_s: float
    t_stop_s: float
    read_times_s: np.ndarray


def render_pulse_energy_deck(hw: HardwareConfig, polarity: str, amplitude_v: float, n0: float,
                             *, width_s: float | None = None,
                             solver: SolverConfig | None = None,
                             name: str = "pulse_energy") -> PulseEnergyDeck:
    """One SET or RESET pulse on one nominal cell (no variation), from state ``n0``, with a
    read before and after (``netlists.programming.render_pulse_deck``), the drivers' voltages
    and currents saved. Width: ``drive.t_write_s`` unless ``width_s`` is given."""
    if polarity not in ("set", "reset"):
        raise ConfigError(f"polarity {polarity!r} must be 'set' or 'reset'")
    width = hw.drive.t_write_s if width_s is None else float(width_s)
    deck = render_pulse_deck(hw, [Pulse(polarity, float(amplitude_v), width)], n0=float(n0),
                             solver=solver, name=name)
    saves = [vec for src, node in PULSE_SOURCES for vec in (f"v({node})", f"i({src})")]
    # render_pulse_deck's layout: read [T_GAP, T_GAP + t_bit], gap, pulse, gap, read.
    t_start = T_GAP_S + hw.drive.t_bit_s
    t_stop = t_start + T_GAP_S + width + T_GAP_S
    return PulseEnergyDeck(add_saves(deck.text, saves), t_start, t_stop, deck.read_times_s)
