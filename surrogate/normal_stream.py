"""A seeded stream of standard normals for read and ADC noise, counter-based.

The stream is a key (from the seed) and a position. A request of ``n`` normals takes the
next ``ceil(n / 2)`` counters of the key (each gives two normals, ``surrogate.normals``) and
moves the position past them, so the values handed out depend only on the seed and on the
sizes of the requests before. :meth:`take` returns the normals as a tensor; :meth:`reserve`
only moves the position and returns where it was, for a kernel that computes the normals
where it uses them (``surrogate.fused``). :meth:`state_dict` and :meth:`load_state_dict`
save and restore the position, for bit-for-bit resumption; a copy or a pickle carries it.
On the CPU the normals come from the compiled kernels (all cores), on other devices from
the same arithmetic in torch.
"""

from __future__ import annotations

from typing import Any

import torch

from netlists.errors import ConfigError
from surrogate.normals import key_for, normals, normals_torch

__all__ = ["NormalStream"]

#: What :meth:`NormalStream.state_dict` records as the generator (the stream's values
#: change with it).
GENERATOR = "splitmix64-box-muller"


class NormalStream:
    """Standard normals in order from the key of ``seed`` (module docstring)."""

    def __init__(self, seed: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed = {seed!r} must be a whole number")
        self.device = torch.device(device)
        self.dtype = dtype
        self.seed = seed
        self.key = key_for(seed)
        self.position = 0           # the next counter

    def reserve(self, pairs: int) -> int:
        """Move past ``pairs`` counters (``2 pairs`` normals); returns the first."""
        if pairs < 0:
            raise ConfigError(f"pairs = {pairs} must be >= 0")
        first = self.position
        self.position += int(pairs)
        return first

    def take(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The next normals, in ``shape``: counter ``c``'s two normals are entries ``i`` and
        ``i + p`` of the flattened request (``p`` its counters, ``i = c - first``); an odd
        count leaves the last counter's second normal unused."""
        n = 1
        for s in shape:
            n *= int(s)
        pairs = -(-n // 2)
        first = self.reserve(pairs)
        if n == 0:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        if self.device.type == "cpu":
            out = torch.from_numpy(normals(self.key, first, pairs))
        else:
            counters = torch.arange(first, first + pairs, device=self.device)
            out = normals_torch(self.key, counters).reshape(-1)
        return out[:n].to(self.dtype).view(shape)

    # -- position --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": GENERATOR, "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") != GENERATOR:
            raise ConfigError(
                "the saved read-noise stream comes from another generator "
                f"({state.get('generator', 'a block-wise torch generator')!r}, this version "
                f"uses {GENERATOR!r}): a run saved by an earlier version cannot resume "
                "bit for bit; start it again, or evaluate its checkpoint")
        self.seed = int(state["seed"])
        self.key = key_for(self.seed)
        self.position = int(state["position"])

    def __getstate__(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": self.dtype, **self.state_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["seed"], device=state["device"], dtype=state["dtype"])
        self.load_state_dict(state)
