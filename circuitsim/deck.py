"""Deck text: the runner's contract on a deck, the cards it adds, and source alterations.

:func:`_prepare` checks a netlist against the contract of :mod:`circuitsim.runner` (a title
line, exactly one ``.op``, ``.dc`` or ``.tran``, an ``.end`` with nothing after it, no
``.control`` block) and returns a :class:`_Deck` split around its ``.end``;
:meth:`_Deck.render` inserts the cards the runner adds there (``.options klu``, the
convergence aids of an attempt, the batch backend's ``.control`` block: "What the runner
adds to the deck" in :mod:`circuitsim.runner`).

For :class:`~circuitsim.runner.LoadedCircuit`: :func:`_deck_elements` finds the deck's
top-level independent sources, :func:`_alteration` checks one requested change, and
:func:`_rewrite_sources` writes the changes into the sources' element lines, which is how
the batch backend emulates ngspice's ``alter``.

Text only: nothing here runs ngspice.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from netlists.errors import ConfigError, NetlistError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.runner import ConvergenceAid


# --------------------------------------------------------------------------------------
# Deck preparation
# --------------------------------------------------------------------------------------

_CARD = re.compile(r"^\s*\.([a-z]+)\b", re.IGNORECASE)
_ANALYSES = frozenset({"op", "dc", "tran", "ac", "noise", "tf", "sens", "pz", "disto", "pss",
                       "sp"})
_SUPPORTED = ("op", "dc", "tran")
_KLU = re.compile(r"\bklu\b", re.IGNORECASE)
_BATCH_CONTROL = (".control", "set num_threads=1", "set filetype=ascii", ".endc")
_SUFFIX = (("meg", 1e6), ("mil", 25.4e-6), ("t", 1e12), ("g", 1e9), ("k", 1e3),
           ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15), ("a", 1e-18))
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)([a-z]*)$", re.IGNORECASE)


def _spice_number(token: str) -> float | None:
    """Value of a SPICE number such as ``10n``, ``2.5meg`` or ``1e-6``; None if not one."""
    match = _NUMBER.match(token.strip())
    if match is None:
        return None
    value = float(match.group(1))
    suffix = match.group(2).lower()
    for name, scale in _SUFFIX:
        if suffix.startswith(name):
            return value * scale
    return value  # ngspice ignores letters that are not a scale suffix ("1s" is 1)


@dataclass(frozen=True)
class _Deck:
    """A checked deck, split around its ``.end`` so that cards can be inserted."""

    head: tuple[str, ...]
    tail: tuple[str, ...]
    analysis: str
    tstop: float | None
    has_klu: bool

    def render(self, aids: Sequence[ConvergenceAid], *, batch: bool) -> str:
        extra: list[str] = []
        if not self.has_klu:
            extra.append(".options klu")
        for aid in aids:
            extra.extend(aid.cards)
        if batch:
            extra.extend(_BATCH_CONTROL)
        return "\n".join([*self.head, *extra, *self.tail]) + "\n"


def _logical_lines(lines: Sequence[str], start: int) -> str:
    """Line ``start`` joined with its ``+`` continuation lines."""
    parts = [lines[start]]
    for line in lines[start + 1:]:
        if not line.lstrip().startswith("+"):
            break
        parts.append(line.lstrip()[1:])
    return " ".join(parts)


def _prepare(netlist: str, name: str) -> _Deck:
    """Check the deck against the runner's contract and locate where cards go."""
    if not isinstance(netlist, str):
        raise TypeError(f"netlist must be SPICE text (str), got {type(netlist).__name__}")
    lines = netlist.splitlines()
    if not netlist.strip():
        raise NetlistError(f"{name}: the netlist is empty")
    end = None
    analyses: list[tuple[str, int]] = []
    has_klu = False
    for index in range(1, len(lines)):  # line 0 is the title, whatever it says
        match = _CARD.match(lines[index])
        if match is None:
            continue
        card = match.group(1).lower()
        if card in ("control", "endc"):
            raise NetlistError(
                f"{name}: line {index + 1}: the netlist must not contain a .control block; "
                "the runner drives ngspice itself")
        if card == "end":
            end = index
            break
        if card in _ANALYSES:
            analyses.append((card, index))
        if card in ("options", "option", "opt", "opts") and \
                _KLU.search(_logical_lines(lines, index)):
            has_klu = True
    if end is None:
        raise NetlistError(f"{name}: the netlist has no .end line (truncated?)")
    trailing = [line for line in lines[end + 1:] if line.strip() and not line.lstrip()
                .startswith("*")]
    if trailing:
        raise NetlistError(f"{name}: text after .end: {trailing[0]!r}")
    if len(analyses) != 1:
        found = ", ".join(f".{card} (line {index + 1})" for card, index in analyses) or "none"
        raise NetlistError(
            f"{name}: the netlist must hold exactly one analysis card "
            f"(.op, .dc or .tran); found {found}")
    analysis, index = analyses[0]
    if analysis not in _SUPPORTED:
        raise NetlistError(
            f"{name}: .{analysis} is not supported by the runner; use .op, .dc or .tran")
    tstop = None
    if analysis == "tran":
        tokens = _logical_lines(lines, index).split()
        tstop = _spice_number(tokens[2]) if len(tokens) > 2 else None
    return _Deck(head=tuple(lines[:end]), tail=tuple(lines[end:]), analysis=analysis,
                 tstop=tstop, has_klu=has_klu)


# --------------------------------------------------------------------------------------
# Sources of a deck, alterations, and their rewriting into deck text (batch backend)
# --------------------------------------------------------------------------------------

# Source names that pass through ngspice's command line unchanged (no "$" substitution,
# no ">" redirection); the worker checks the same.
_SOURCE_NAME = re.compile(r"[a-z0-9_.:+\-]+")
# Transient functions of independent sources (a PWL alteration replaces any of them).
_TRAN_FUNCTIONS = frozenset({"pulse", "sin", "exp", "pwl", "sffm", "am", "trnoise",
                             "trrandom"})
# Keywords that may follow the nodes of a source line; anything else first is its DC value.
_SOURCE_KEYWORDS = frozenset({"dc", "ac", "distof1", "distof2", "external"}) | _TRAN_FUNCTIONS


@dataclass(frozen=True)
class _SourceLine:
    """Where an independent source's element line is: ``head[start:stop]`` of a deck."""

    name: str  # lower case
    start: int
    stop: int


def _is_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("*")


def _deck_elements(deck: _Deck) -> tuple[dict[str, _SourceLine], frozenset[str]]:
    """The deck's top-level independent sources, and the names of all its top-level elements.

    Elements inside ``.subckt`` ... ``.ends`` and in ``.include``/``.lib`` files are not seen.
    A logical line spans its ``+`` continuation lines (and comment lines between them).
    """
    head = deck.head
    sources: dict[str, _SourceLine] = {}
    elements: set[str] = set()
    depth = 0
    index = 1  # line 0 is the title
    while index < len(head):
        stop = index + 1
        probe = stop
        while probe < len(head):
            if head[probe].lstrip().startswith("+"):
                stop = probe = probe + 1
            elif _is_comment(head[probe]):
                probe += 1
            else:
                break
        line = head[index].strip()
        if not _is_comment(line) and not line.startswith("+"):
            card = _CARD.match(line)
            if card is not None:
                word = card.group(1).lower()
                if word == "subckt":
                    depth += 1
                elif word == "ends":
                    depth = max(depth - 1, 0)
            elif depth == 0:
                name = line.split()[0].lower()
                elements.add(name)
                if name[0] in "vi":
                    sources[name] = _SourceLine(name, index, stop)
        index = stop
    return sources, frozenset(elements)


def _real(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _alteration(key: str, value: object) -> tuple[str, tuple[float, ...]]:
    """``("dc", (v,))`` or ``("pwl", (t0, v0, ...))`` for one requested change."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    number = _real(value)
    if number is not None:
        if not math.isfinite(number):
            raise ConfigError(f"source {key!r}: the DC value {number!r} is not finite")
        return "dc", (number,)
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ConfigError(f"source {key!r}: {value!r} is neither a DC value (a number) nor a "
                          "PWL point list [t0, v0, t1, v1, ...]")
    points: list[float] = []
    for item in list(value.reshape(-1)) if isinstance(value, np.ndarray) else value:
        number = _real(item)
        if number is None:
            raise ConfigError(f"source {key!r}: the PWL list holds {item!r}, not a number")
        if not math.isfinite(number):
            raise ConfigError(f"source {key!r}: the PWL list holds the non-finite {number!r}")
        points.append(number)
    if len(points) < 2 or len(points) % 2:
        raise ConfigError(f"source {key!r}: a PWL list needs an even number (>= 2) of values "
                          f"t0, v0, t1, v1, ...; got {len(points)}")
    times = points[0::2]
    for k in range(1, len(times)):
        if times[k] < times[k - 1]:
            raise ConfigError(f"source {key!r}: PWL times must not decrease; point {k} is at "
                              f"t = {times[k]!r} after t = {times[k - 1]!r}")
    return "pwl", tuple(points)


def _number_text(value: float) -> str:
    return repr(float(value))


def _strip_inline_comment(text: str) -> str:
    """``text`` without an ngspice inline comment (``;``, or `` $`` / `` //`` after a blank)."""
    match = re.search(r";|(?<=\s)\$|(?<=\s)//", text)
    return text if match is None else text[:match.start()]


def _read_word(text: str, index: int) -> int:
    """End of the word starting at ``index`` (braces and quotes kept whole)."""
    closing = {"{": "}", "'": "'", '"': '"'}
    while index < len(text) and not text[index].isspace() and text[index] not in "(),=":
        if text[index] in closing:
            end = text.find(closing[text[index]], index + 1)
            index = len(text) if end < 0 else end + 1
        else:
            index += 1
    return index


def _source_items(text: str) -> list[tuple[str, str, str]]:
    """Split what follows a source's nodes into ``(kind, word, text)`` items.

    kind is ``"call"`` (``word(...)``), ``"assign"`` (``word=value``) or ``"word"``.
    """
    items: list[tuple[str, str, str]] = []
    index = 0
    while index < len(text):
        if text[index].isspace() or text[index] == ",":
            index += 1
            continue
        if text[index] in "()=":
            raise ValueError(f"unexpected {text[index]!r}")
        end = _read_word(text, index)
        word = text[index:end]
        after = end
        while after < len(text) and text[after].isspace():
            after += 1
        if after < len(text) and text[after] == "(":
            depth, close = 0, after
            while close < len(text):
                depth += {"(": 1, ")": -1}.get(text[close], 0)
                if depth == 0:
                    break
                close += 1
            if depth:
                raise ValueError("unbalanced parentheses")
            items.append(("call", word.lower(), f"{word}{text[after:close + 1]}"))
            index = close + 1
        elif after < len(text) and text[after] == "=":
            start = after + 1
            while start < len(text) and text[start].isspace():
                start += 1
            stop = _read_word(text, start)
            if stop == start:
                raise ValueError(f"no value after {word}=")
            items.append(("assign", word.lower(), f"{word}={text[start:stop]}"))
            index = stop
        else:
            items.append(("word", word.lower(), word))
            index = end
    return items


def _edit_source_line(text: str, dc: float | None, pwl: Sequence[float] | None,
                      name: str) -> str:
    """One source element line with its DC value and/or transient function replaced."""
    code = _strip_inline_comment(text)
    parts = code.split(None, 3)
    if len(parts) < 3:
        raise NetlistError(f"{name}: cannot rewrite the source line {text.strip()!r}")
    rest = parts[3] if len(parts) > 3 else ""
    try:
        items = _source_items(rest)
    except ValueError as err:
        raise NetlistError(f"{name}: cannot rewrite the source line {text.strip()!r} for the "
                           f"batch backend: {err}") from None
    pwl_text = None if pwl is None else \
        "pwl(" + " ".join(_number_text(v) for v in pwl) + ")"
    kept: list[str] = []
    placed = False
    index = 0
    while index < len(items):
        kind, word, item = items[index]
        index += 1
        if kind == "call" and word in _TRAN_FUNCTIONS:
            if pwl_text is not None:
                if placed:
                    continue
                item, placed = pwl_text, True  # the new PWL where the old function was
        elif kind == "assign" and word == "dc":
            if dc is not None:
                continue
        elif kind == "word" and word == "dc":
            if dc is not None:
                index += 1  # drop "dc" and its value
                continue
            if index < len(items):
                item = f"{item} {items[index][2]}"
                index += 1
        elif kind == "word" and index == 1 and word not in _SOURCE_KEYWORDS:
            if dc is not None:
                continue  # the DC value written without the keyword
        elif kind == "word" and word in _TRAN_FUNCTIONS and pwl_text is not None:
            raise NetlistError(
                f"{name}: cannot rewrite the source line {text.strip()!r} for the batch "
                f"backend: write {word}(...) with parentheses")
        kept.append(item)
    new = parts[:3]
    if dc is not None:
        new += ["dc", _number_text(dc)]
    new += kept
    if pwl_text is not None and not placed:
        new.append(pwl_text)
    return " ".join(new)


def _rewrite_sources(deck: _Deck, sources: Mapping[str, _SourceLine],
                     state: Mapping[tuple[str, str], tuple[float, ...]], name: str) -> _Deck:
    """``deck`` with the altered sources' element lines rewritten (batch emulation)."""
    changes: dict[str, dict[str, tuple[float, ...]]] = {}
    for (source, kind), values in state.items():
        changes.setdefault(source, {})[kind] = values
    if not changes:
        return deck
    head = list(deck.head)
    for source in sorted(changes, key=lambda key: -sources[key].start):
        where = sources[source]
        logical = " ".join(
            line.lstrip()[1:] if line.lstrip().startswith("+") else line
            for line in head[where.start:where.stop] if not _is_comment(line))
        dc = changes[source].get("dc")
        head[where.start:where.stop] = [_edit_source_line(
            logical, None if dc is None else dc[0], changes[source].get("pwl"), name)]
    return dataclasses.replace(deck, head=tuple(head))
