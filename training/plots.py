"""Plots of a training run: learning curves and the per-layer histograms of device writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibration.report import save_png

__all__ = ["plot_run"]


def plot_run(result: Any, folder: Path | str) -> list[Path]:
    """``curves.png`` (loss and accuracies per epoch) and, for an analog run,
    ``writes.png`` (how many times each device was written, one panel per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    cfg = result.config
    hist = result.history
    epochs = [h["epoch"] for h in hist]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in hist], "o-")
    ax1.set(xlabel="epoch", ylabel="training loss", title=f"{cfg.model}, {cfg.mode}")
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in hist], "o-", label="train")
    ax2.plot(epochs, [100 * h["test_accuracy"] for h in hist], "s-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy, %", title=cfg.dataset)
    ax2.legend()
    fig.tight_layout()
    paths = [save_png(fig, folder / "curves.png")]
    if result.device_writes:
        layers = list(result.device_writes.items())
        fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.5), squeeze=False)
        for ax, (name, counts) in zip(axes[0], layers):
            c = np.asarray(counts).ravel()
            ax.hist(c, bins=np.arange(c.max() + 2) - 0.5 if c.max() < 60 else 60)
            ax.set(xlabel="writes per device", ylabel="devices",
                   title=f"{name}\nmean {c.mean():.2f}, max {c.max()}")
            ax.set_yscale("log")
        fig.tight_layout()
        paths.append(save_png(fig, folder / "writes.png"))
    return paths
