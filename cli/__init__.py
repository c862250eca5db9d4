"""The ``circuitsim`` command line: the one package that knows every layer
(``netlists -> circuitsim -> calibration -> surrogate -> training``) and holds none of their logic."""

from cli.main import main

__all__ = ["main"]
