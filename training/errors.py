"""The training layer's errors."""

from __future__ import annotations

from netlists.errors import CircuitSimError

__all__ = ["TrainingError"]


class TrainingError(CircuitSimError):
    """A run that cannot go on (non-finite values, unusable checkpoint or output folder)."""
