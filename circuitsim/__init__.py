"""circuitsim: ngspice-solved RRAM compute-in-memory circuits.

This package runs ngspice and turns its results into arrays: the runner (``Runner``, and
``SpiceRunner``, the interface that code taking a runner types against), one 1T1R cell
under pulse trains (``simulate_pulses``), whole-tile reads (``solve_tile``) and the numpy
reference of the compact model (``DeviceModel``). It re-exports the configuration and
the exception hierarchy from :mod:`netlists`. It never imports torch.
"""

from circuitsim.device import PulseResult, simulate_pulses, simulate_schedule
from circuitsim.interfaces import SpiceRunner
from circuitsim.reference import DeviceModel
from circuitsim.runner import (CircuitInvalidatedError, LoadedCircuit, NgspiceInfo, Runner,
                               SimResult, check_ngspice)
from circuitsim.tile import TileResult, ideal_codes, solve_tile
from netlists.config import (ADCParams, ArrayParams, DeviceParams, DriveParams,
                             HardwareConfig, SolverConfig, TIAParams, TransistorParams,
                             load_config, preset, save_config)
from netlists.errors import (CircuitSimError, ConfigError, ConvergenceError, NetlistError,
                             SimulationTimeout, SimulatorError, SimulatorNotFoundError,
                             TableError)

__all__ = [
    "Runner", "SimResult", "NgspiceInfo", "check_ngspice", "LoadedCircuit",
    "CircuitInvalidatedError", "SpiceRunner",
    "simulate_pulses", "simulate_schedule", "PulseResult",
    "solve_tile", "ideal_codes", "TileResult",
    "DeviceModel",
    "HardwareConfig", "SolverConfig", "DeviceParams", "TransistorParams", "ArrayParams",
    "TIAParams", "ADCParams", "DriveParams", "preset", "load_config", "save_config",
    "CircuitSimError", "ConfigError", "NetlistError", "SimulatorError",
    "SimulatorNotFoundError", "ConvergenceError", "SimulationTimeout", "TableError",
]
