"""The training layer's errors: a run that cannot go on, and a run stopped by the user."""

from __future__ import annotations

from pathlib import Path

from netlists.errors import CircuitSimError

__all__ = ["TrainingError", "TrainingInterrupted"]


class TrainingError(CircuitSimError):
    """A run that cannot go on (non-finite values, unusable checkpoint or output folder)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run. Still a ``KeyboardInterrupt`` (so it stops the program as one
    does), with what was kept: ``checkpoint`` (the path, or None when none was written yet)
    and ``epochs_done`` (the epochs it holds); the message says how to go on."""

    def __init__(self, message: str, *, checkpoint: Path | None, epochs_done: int) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.epochs_done = epochs_done
