"""A stream of standard normal draws, generated ahead of use on a second CPU core.

Drawing read noise costs an analog forward on the CPU more than anything else it does: a
training step of LeNet draws some 900,000 normals, on one core (torch's CPU generator is
serial; what they cost: ``benchmarks/bench_noise.py``, figures in ``benchmarks/README.md``).
The draws do not depend on anything the read computes, so they can be made while that
core's partner has nothing to do, e.g. during the write-and-verify pulse loop, which runs
on one core.

:class:`NormalStream` hands out normals from its own generator in order. It makes them in
blocks of a fixed size, each block one ``torch.randn`` call, in a fixed order, so the values
handed out depend only on the seed and on the sizes of the requests before, never on when a
block was made: :meth:`prefetch` makes blocks ahead on a background thread (on the CPU; on CUDA
the generator is fast and asynchronous already and blocks are made when needed), and
:meth:`take` waits for a block that is not ready yet. :meth:`state_dict` and
:meth:`load_state_dict` save and restore the position, for bit-for-bit resumption.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from netlists.errors import ConfigError

__all__ = ["NormalStream"]

#: Normals per block: a LeNet training step takes about one.
_BLOCK = 1 << 20


class NormalStream:
    """Standard normal draws in order from a generator seeded with ``seed`` (module
    docstring). ``block``: normals per block (the stream's values depend on it)."""

    def __init__(self, seed: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, block: int = _BLOCK) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or block < 16:
            raise ConfigError(f"block = {block!r} must be a whole number >= 16")
        self.device = torch.device(device)
        self.dtype = dtype
        self.block = block
        self.seed = seed
        self.generator = torch.Generator(self.device).manual_seed(seed)
        # blocks made or being made, in order: (generator state before it, the block)
        self._queue: collections.deque[Future] = collections.deque()
        self._state = self.generator.get_state()     # before the current block
        self._current: torch.Tensor | None = None
        self._offset = 0                              # taken from the current block
        self._since_prefetch = 0
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()                 # the generator is the worker's

    # -- making blocks -------------------------------------------------------------------
    def _make(self) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            state = self.generator.get_state()
            return state, torch.randn(self.block, generator=self.generator, dtype=self.dtype,
                                      device=self.device)

    def _schedule(self, blocks: int) -> None:
        for _ in range(blocks):
            if self.device.type == "cpu":
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="normals")
                self._queue.append(self._executor.submit(self._make))
            else:
                done: Future = Future()
                done.set_result(self._make())
                self._queue.append(done)

    def _next_block(self) -> None:
        # none made ahead: make it here (no worker touches the generator meanwhile)
        made = self._queue.popleft().result() if self._queue else self._make()
        self._state, self._current = made
        self._offset = 0

    def prefetch(self, count: int | None = None) -> None:
        """Have blocks made ahead (on a background thread, on the CPU) until ``count``
        normals are ready or under way; by default as many as were taken since the last
        call (one more training step like the last one)."""
        want = self._since_prefetch if count is None else int(count)
        self._since_prefetch = 0
        left = 0 if self._current is None else self.block - self._offset
        missing = want - left - len(self._queue) * self.block
        if missing > 0:
            self._schedule(-(-missing // self.block))

    # -- handing out ---------------------------------------------------------------------
    def take(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The next normals, in ``shape``: a view of a block (read it, do not write it).

        A request that does not fit in what is left of the current block starts the next
        block (the rest is skipped: a rule on the requests' sizes, so the values stay those
        of the seed and the requests); one larger than a block is copied from several."""
        n = 1
        for s in shape:
            n *= int(s)
        if n == 0:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        self._since_prefetch += n
        if n <= self.block:
            if self._current is None or self._offset + n > self.block:
                self._next_block()
            out = self._current[self._offset:self._offset + n]
            self._offset += n
            return out.view(shape)
        if self._current is None:
            self._next_block()
        out = torch.empty(n, dtype=self.dtype, device=self.device)
        done = 0
        while done < n:
            if self._offset == self.block:
                self._next_block()
            k = min(n - done, self.block - self._offset)
            out[done:done + k] = self._current[self._offset:self._offset + k]
            self._offset += k
            done += k
        return out.view(shape)

    # -- position --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position in the stream: the generator's state before the current block, and
        how many of that block were taken."""
        return {"seed": self.seed, "block": self.block, "state": self._state.clone(),
                "offset": self._offset if self._current is not None else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("block") != self.block:
            raise ConfigError(f"the saved normal stream has blocks of {state.get('block')}, "
                              f"this one of {self.block}")
        self._drain()
        with self._lock:
            self.generator.set_state(state["state"].clone())
        self._current, self._offset = None, 0
        offset = int(state["offset"])
        if offset:
            self._next_block()
            self._offset = offset
        self._since_prefetch = 0

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry the position, not the thread: a copy hands out the same
        normals as the original from there on, independently."""
        return {"device": str(self.device), "dtype": self.dtype, **self.state_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["seed"], device=state["device"], dtype=state["dtype"],
                      block=state["block"])
        self.load_state_dict(state)

    def _drain(self) -> None:
        """Wait for the blocks under way and drop every block made ahead."""
        while self._queue:
            self._queue.popleft().result()

    def close(self) -> None:
        """Stop the background thread (the stream still works, without making ahead)."""
        self._drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
