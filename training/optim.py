"""The mixed-precision optimizer: digital updates, device writes only past a threshold.

:class:`MixedPrecisionOptimizer` wraps any torch optimizer (SGD, Adam, AdamW...) built over
the model's parameters. Each :meth:`~MixedPrecisionOptimizer.step` lets the wrapped
optimizer compute its update as usual; for the analog weights (``AnalogTiles.weight``) the
update is then taken back out of the weights and handled by ``mode``:

``mixed`` (the paper's scheme)
    The update is added to a digital accumulator per weight. Where the accumulated magnitude
    reaches ``threshold x`` the weight range (``2 w_max``; default 1/15, as in the paper),
    the weight's target becomes ``weight + accumulator``, the device pair is write-verified
    to it through the chip's programming model, the high-precision weight is set to the
    programmed (quantized) target and the accumulator cleared. Only the devices whose level
    changes are written (the idle device of a pair stays on its floor). Nothing is written
    below the threshold; sub-threshold updates keep accumulating.
``naive``
    No accumulation: every step, every device pair is write-verified to its weight's new
    target quantized to the devices' levels, and the weight set to it, so an update smaller
    than half a level is lost (the paper's per-batch baseline).

For ``mixed``, the accumulation, the threshold and the plan of the writes are one pass over
each layer's weights (``training.accumulate``: compiled on the CPU, torch elsewhere).

Digital parameters (biases, batch norm, the tiles' digital scales) are updated by the
wrapped optimizer directly. Writes and pulses are counted per device by the tiles
(``write_count``, ``pulse_count``); :meth:`~MixedPrecisionOptimizer.write_summary` adds
them up. A step whose update holds NaN or inf raises
:class:`~training.analog.NonFiniteValues` before it writes anything.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netlists.config import SurrogateConfig
from netlists.errors import ConfigError
from training.accumulate import accumulate, accumulate_torch
from training.analog import AnalogTiles, NonFiniteValues, analog_layers, program_plans

__all__ = ["MixedPrecisionOptimizer", "MODES"]

MODES = ("mixed", "naive")


class MixedPrecisionOptimizer:
    """Wraps ``optimizer`` (over ``model``'s parameters) for the analog weights of ``model``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 mode: str = "mixed",
                 threshold: float = SurrogateConfig.write_threshold) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode = {mode!r} is not allowed: choose one of {list(MODES)}")
        # checked where every write threshold is: SurrogateConfig.write_threshold
        threshold = SurrogateConfig(write_threshold=threshold).write_threshold
        self.model = model
        self.optimizer = optimizer
        self.mode = mode
        self.threshold = float(threshold)
        self.layers: list[tuple[str, AnalogTiles]] = list(analog_layers(model))
        if not self.layers:
            raise ConfigError("the model has no analog layers: convert it with "
                              "training.analog.from_digital first (or train it in float mode)")
        self.accumulators = {name: torch.zeros_like(layer.weight) for name, layer in
                             self.layers}
        self.step_writes = 0
        self.step_pulses = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """One optimizer step (module docstring); ``step_writes``/``step_pulses`` say what it
        programmed."""
        before = [layer.weight.detach().clone() for _, layer in self.layers]
        self.optimizer.step()
        for name, layer in self.layers:          # the weights were finite before the step
            if not bool(torch.isfinite(layer.weight).all()):
                raise NonFiniteValues(f"the update of the analog weights {name} holds NaN or "
                                      "inf")
        plans = []
        for (name, layer), old in zip(self.layers, before):
            if self.mode == "mixed":
                weight, acc = layer.weight, self.accumulators[name]
                fused = weight.device.type == "cpu" and weight.is_contiguous() \
                    and acc.is_contiguous()
                run = accumulate if fused else accumulate_torch
                due = run(weight, old, acc, layer.target_level, w_max=layer.w_max,
                          threshold=self.threshold * 2.0 * float(layer.w_max),
                          levels=layer.levels)
                if due is not None:
                    plans.append(layer.plan_selected(*due))
            else:
                target = old + (layer.weight.detach() - old)      # old + delta, rounded
                layer.weight.data.copy_(old)
                plans.append(layer.plan(target, only_changed=False))
        stats = program_plans(plans)
        self.step_writes = sum(s.devices for s in stats)
        self.step_pulses = sum(s.pulses for s in stats)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "mode": self.mode,
                "threshold": self.threshold,
                "accumulators": {k: v.clone() for k, v in self.accumulators.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.mode or state.get("threshold") != self.threshold:
            raise ConfigError(f"the saved optimizer state is for mode {state.get('mode')!r}, "
                              f"threshold {state.get('threshold')!r}; this run uses "
                              f"{self.mode!r}, {self.threshold!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        for name, value in state["accumulators"].items():
            if name not in self.accumulators or value.shape != self.accumulators[name].shape:
                raise ConfigError(f"the saved accumulator {name!r} does not match this model")
            self.accumulators[name].copy_(value)

    def write_summary(self) -> dict[str, Any]:
        """Writes and pulses so far: totals, per device (mean, max over the devices that
        hold weights), and per layer."""
        per_layer = {}
        total_w = total_p = 0
        counts = []
        for name, layer in self.layers:
            w = layer.weight_device_writes()
            per_layer[name] = {"device_writes": int(layer.write_count.sum()),
                               "write_pulses": int(layer.pulse_count.sum()),
                               "devices": int(w.numel())}
            total_w += per_layer[name]["device_writes"]
            total_p += per_layer[name]["write_pulses"]
            counts.append(w.reshape(-1))
        every = torch.cat(counts).to(torch.float64)
        return {"device_writes": total_w, "write_pulses": total_p,
                "writes_per_device_mean": float(every.mean()),
                "writes_per_device_max": int(every.max()), "layers": per_layer}
