"""The calibration surfaces, by name (see :mod:`calibration.base` for what a surface is)."""

from __future__ import annotations

import importlib

from netlists.errors import ConfigError

__all__ = ["SURFACE_NAMES", "get_surface"]

#: Surface name -> module under ``calibration.surfaces`` exposing ``SURFACE``, in the order a
#: calibration computes and stores them.
_MODULES = {
    "cell_read": "cell_read",
    "programming": "programming",
    "write_verify": "write_verify",
    "array": "array",
    "tia": "tia",
    "adc": "adc",
    "energy": "energy",
    "retention": "retention",
}
SURFACE_NAMES = tuple(_MODULES)


def get_surface(name: str):
    """The surface object named ``name``; ConfigError listing the names otherwise."""
    try:
        module = _MODULES[name]
    except KeyError:
        raise ConfigError(f"unknown surface {name!r}: choose from {list(SURFACE_NAMES)}",
                          field="surfaces") from None
    surface = importlib.import_module(f"calibration.surfaces.{module}").SURFACE
    if surface.name != name:
        raise ConfigError(f"calibration.surfaces.{module} defines surface {surface.name!r}, "
                          f"expected {name!r}")
    return surface
