"""PNG plots of every surface in a calibration table, for a person to look at.

One figure per surface. Each dataset is drawn against its first axis; a second axis becomes
a family of curves (at most 8, evenly picked); further axes are fixed at their middle index
and the figure's title says where. Scalars and per-case arrays are listed as text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from calibration.base import SurfaceData
from calibration.store import open_table
from netlists.files import save_png

__all__ = ["write_report", "save_png"]


def _family(n: int, most: int = 8) -> list[int]:
    if n <= most:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, most).round().astype(int).tolist()))


def _plot_dataset(ax, name: str, surface: SurfaceData) -> None:
    """x: the dataset's longest axis; curves: the next longest (at most 8 picked); a
    two-valued axis (e.g. polarity) as solid and dashed lines; any other axis fixed at its
    middle value, named in the title."""
    ds = surface.datasets[name]
    dims = list(surface.dims.get(name, []))
    data = np.asarray(ds.data, dtype=float)
    if not dims or data.ndim == 0:
        ax.axis("off")
        flat = np.ravel(data)
        text = ", ".join(f"{v:.4g}" for v in flat[:12]) + (" ..." if flat.size > 12 else "")
        ax.text(0.0, 0.5, f"{name} [{ds.unit}]\n{text}", fontsize=8, va="center", wrap=True)
        return
    while data.ndim > len(dims):  # trailing unnamed dims: their mean
        data = data.mean(axis=-1)
    order = sorted(range(len(dims)), key=lambda k: -data.shape[k])
    x_dim = order[0]
    family = next((k for k in order[1:] if data.shape[k] > 2), None)
    styles = next((k for k in order[1:] if data.shape[k] == 2 and k != family), None)
    fixed, index = [], [slice(None)] * data.ndim
    for k, dim in enumerate(dims):
        if k not in (x_dim, family, styles):
            mid = data.shape[k] // 2
            index[k] = mid
            fixed.append(f"{dim}={float(surface.axes[dim].data[mid]):.3g}")
    sub = data[tuple(index)]
    kept = [k for k in range(len(dims)) if k in (x_dim, family, styles)]
    sub = np.moveaxis(sub, [kept.index(k) for k in (x_dim, family, styles) if k is not None],
                      list(range(len([k for k in (x_dim, family, styles) if k is not None]))))
    x_axis = surface.axes[dims[x_dim]]
    x = np.asarray(x_axis.data, dtype=float)
    curves = _family(data.shape[family]) if family is not None else [None]
    variants = [0, 1] if styles is not None else [None]
    for j in curves:
        for s_idx, v in enumerate(variants):
            y = sub
            label = []
            if family is not None:
                y = y[:, j]
                fam = surface.axes[dims[family]]
                label.append(f"{dims[family]}={float(fam.data[j]):.3g} {fam.unit}")
            if styles is not None:
                y = y[..., v] if y.ndim > 1 else y
                st = surface.axes[dims[styles]]
                label.append(f"{dims[styles]}={float(st.data[v]):.3g}")
            ax.plot(x, y, marker=".", lw=1, ls="-" if s_idx == 0 else "--",
                    color=None if s_idx == 0 else ax.lines[-1].get_color(),
                    label=", ".join(label) or None)
    if family is not None or styles is not None:
        ax.legend(fontsize=6)
    ax.set_xlabel(f"{dims[x_dim]} [{x_axis.unit}]")
    ax.set_ylabel(f"{name} [{ds.unit}]")
    ax.set_title(name + (f" ({', '.join(fixed)})" if fixed else ""), fontsize=9)
    ax.grid(True, alpha=0.3)


def _summaries(surface: SurfaceData) -> list[str]:
    """Datasets to draw: per-replica raw arrays are left out where a summary exists."""
    names = list(surface.datasets)
    raw = {"replica", "repeat", "case"}
    keep = []
    for n in names:
        dims = set(surface.dims.get(n, []))
        if dims & raw and any(m.startswith(n + "_") for m in names):
            continue
        keep.append(n)
    return keep


def _array_view(plt, surface: SurfaceData, title: str):
    """The array surface: departure of the fitted network and of the ideal crossbar from
    ngspice, per column and bit-plane, in ADC LSB at the TIA output."""
    d = surface.datasets
    lsb_a = float(surface.attrs.get("lsb_current_a", 0.0)) or None
    spice = np.asarray(d["spice_column_current_a"].data, dtype=float).ravel()
    model = np.asarray(d["model_column_current_a"].data, dtype=float).ravel()
    ideal = np.asarray(d["ideal_column_current_a"].data, dtype=float).ravel()
    scale, unit = (1.0 / lsb_a, "LSB") if lsb_a else (1e6, "uA")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    axes[0].scatter(spice * 1e6, (ideal - spice) * scale, s=4, label="ideal crossbar")
    axes[0].scatter(spice * 1e6, (model - spice) * scale, s=4, label="fitted network")
    axes[0].set_xlabel("ngspice column current [uA]")
    axes[0].set_ylabel(f"model - ngspice [{unit}]")
    axes[0].legend(fontsize=8)
    axes[0].grid(True, alpha=0.3)
    axes[1].scatter(spice * 1e6, (model - spice) * scale, s=4, color="C1")
    axes[1].set_xlabel("ngspice column current [uA]")
    axes[1].set_ylabel(f"fitted network - ngspice [{unit}]")
    axes[1].set_title("fitted network alone", fontsize=9)
    axes[1].grid(True, alpha=0.3)
    coeffs = ", ".join(f"{v:.4g}" for v in np.ravel(d["coefficients_ohm"].data)) \
        if "coefficients_ohm" in d else ""
    fig.suptitle(f"{title}\nfitted r_drv, r_row, r_col, r_vg = {coeffs} ohm", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


_VIEWS = {"array": ("spice_column_current_a", _array_view)}


def write_report(table: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw each surface of ``table`` as ``<out_dir>/<surface>.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab = open_table(Path(table))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, surface in tab.surfaces.items():
        view = _VIEWS.get(name)
        if view is not None and view[0] in surface.datasets:
            fig = view[1](plt, surface, f"{name} — {tab.path.name}")
            written.append(save_png(fig, out / f"{name}.png", dpi=110))
            continue
        names = _summaries(surface)
        cols = min(3, max(1, len(names)))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax, ds_name in zip(axes.ravel(), names):
            _plot_dataset(ax, ds_name, surface)
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        fig.suptitle(f"{name} — {tab.path.name}", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        written.append(save_png(fig, out / f"{name}.png", dpi=110))
    return written


