"""What a calibration surface is, for the orchestrator and for each surface module.

A surface is computed from many independent SPICE *jobs*. Each job is described by a small
JSON-able dict (its *point*), solved in a worker process with that worker's own ngspice
runner, and returns named numpy arrays. When every job is done, ``assemble`` turns the list
of job results (in point order) into the surface stored in HDF5: axes and datasets, each with
a unit, plus attributes.

Contract for surface modules (``calibration/surfaces/*.py``), each exposing one object that
satisfies :class:`Surface`:

* ``name``: the HDF5 group name (``"cell_read"``, ``"tia"``, ...), lower case.
* ``grid_type``: a frozen dataclass of the sweep grid (validated at construction: a bad
  sweep spec raises :class:`~netlists.errors.ConfigError` naming the field); ``grid(preset)``
  returns the grid for ``"tiny"``, ``"chip"`` or ``"paper-sim"``.
* ``points(hw, grid)``: the jobs, in a fixed order. Deterministic: the same inputs give the
  same points (seeds are part of the points).
* ``solve(hw, grid, point, runner)``: runs in a worker, with that process's runner (a
  :class:`~circuitsim.interfaces.SpiceRunner`); pure apart from ngspice; raises a
  :class:`~netlists.errors.CircuitSimError` on failure (never returns zeros).
* ``assemble(hw, grid, points, results)``: the :class:`SurfaceData`.
* ``netlists(hw, grid)``: representative netlist texts that the results depend on (they go
  into the content hash, so a changed template makes a new calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from netlists.config import HardwareConfig, SolverConfig
from netlists.errors import ConfigError, SimulatorError

if TYPE_CHECKING:  # pragma: no cover
    from circuitsim.interfaces import SpiceRunner

__all__ = ["Array", "SurfaceData", "Surface", "Point", "JobResult", "preset_grid",
           "result_vector", "steps_per_bit"]

Point = Mapping[str, Any]
JobResult = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Array:
    """A named array with its unit (``"S"``, ``"V"``, ``"A"``, ``"1e26 m^-3"``, ``"1"``...)."""

    data: np.ndarray
    unit: str
    description: str = ""


@dataclass(frozen=True)
class SurfaceData:
    """One surface as stored: ``axes`` are the grid coordinates (1-D), ``datasets`` the values.

    ``datasets[k].data`` has one dimension per axis named in ``dims[k]`` (in that order),
    possibly followed by trailing dimensions described in the dataset's description.
    ``attrs`` hold scalars and strings (e.g. the representation used and why).
    """

    axes: Mapping[str, Array]
    datasets: Mapping[str, Array]
    dims: Mapping[str, Sequence[str]]
    attrs: Mapping[str, Any] = field(default_factory=dict)


class Surface(Protocol):
    name: str
    grid_type: type

    def grid(self, preset: str) -> Any: ...

    def points(self, hw: HardwareConfig, grid: Any) -> list[Point]: ...

    def solve(self, hw: HardwareConfig, grid: Any, point: Point,
              runner: SpiceRunner) -> JobResult: ...

    def assemble(self, hw: HardwareConfig, grid: Any, points: Sequence[Point],
                 results: Sequence[JobResult]) -> SurfaceData: ...

    def netlists(self, hw: HardwareConfig, grid: Any) -> list[str]: ...


def preset_grid(surface: str, presets: Mapping[str, Any], preset: str,
                grid_type: type | None = None) -> Any:
    """``presets[preset]`` (built as ``grid_type(**spec)`` when it is a mapping and a type is
    given); ConfigError naming the surface and the presets otherwise."""
    try:
        value = presets[preset]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown preset {preset!r} for surface {surface!r}: choose one of "
                          f"{sorted(presets)}") from None
    if grid_type is not None and isinstance(value, Mapping):
        return grid_type(**value)
    return value


def steps_per_bit(runner: SpiceRunner) -> int:
    """The transient resolution of the runner's solver (the tile deck's), default otherwise."""
    solver = getattr(runner, "solver", None)
    return (solver if isinstance(solver, SolverConfig) else SolverConfig()).steps_per_bit


def result_vector(result: Any, key: str, name: str, size: int | None = None) -> np.ndarray:
    """``result[key]`` as a finite 1-D float array (of ``size`` if given), else SimulatorError."""
    try:
        vec = np.asarray(result[key], dtype=float)
    except KeyError:
        raise SimulatorError(f"ngspice returned no vector {key!r}", netlist=name) from None
    if vec.ndim != 1 or vec.size == 0 or (size is not None and vec.size != size) \
            or not np.all(np.isfinite(vec)):
        raise SimulatorError(f"vector {key!r} has shape {vec.shape}"
                             + (f" (expected ({size},))" if size is not None else "")
                             + " or holds non-finite values", netlist=name)
    return vec
