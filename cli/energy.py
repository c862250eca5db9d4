"""``circuitsim energy``: energy and latency of a tile VMM and of one image of a model."""

from __future__ import annotations

import argparse

from cli.commands import emit, load_calibration
from netlists.errors import ConfigError


def _energy_table(args: argparse.Namespace):
    """``--table`` (checked against ``--preset``/``--config``), else the preset's ``energy``
    surface from the cache, built first when missing (that surface alone)."""
    return load_calibration(args, surfaces=["energy"])


def cmd_energy(args: argparse.Namespace) -> None:
    from calibration.energy_model import describe, tile_operation
    from netlists.energy_config import load_energy_config
    from training.energy import PAPER_TABLE2, PAPER_VMM, image_figures
    from training.models import MODEL_NAMES

    if args.model not in MODEL_NAMES:
        raise ConfigError(f"--model {args.model!r} is not a model: choose one of "
                          f"{list(MODEL_NAMES)}", field="model")
    config = load_energy_config(args.config)      # bad [energy] values before any work
    table = _energy_table(args)
    op = tile_operation(table, config)
    payload = describe(op)
    image = image_figures(args.model, op)
    payload["image_energy_uj"] = image["tile_ops"] * payload["vmm_energy_nj"] * 1e-3
    payload["image_latency_ms"] = image["image_latency_ms"]
    payload.update({k: image[k] for k in ("tile_ops", "tiles", "devices", "weight_devices")})
    payload["layers"] = image["layers"]
    payload["model"] = args.model
    payload["paper"] = {**PAPER_TABLE2[args.model], **PAPER_VMM}
    payload["energy_config"] = config.to_dict()
    payload["table"] = str(table.path)
    paper = payload["paper"]
    vmm_paper = paper["vmm_energy_nj_256x64"] if op.rows == 256 else \
        paper["vmm_energy_nj_64x64"]
    summary = "\n".join([
        f"{op.rows}x{op.cols} tile VMM: {payload['vmm_energy_nj']:.3f} nJ (paper "
        f"{vmm_paper} nJ), {payload['tops_per_w']:.2f} TOPS/W (paper {paper['tops_per_w']}), "
        f"{payload['vmm_latency_us']:.3f} us; crossbar {100 * payload['crossbar_fraction']:.2f}%"
        f" of the energy (paper < 2%)",
        "  " + ", ".join(f"{b} {v:.4g}" for b, v in payload["breakdown"].items()) + " (nJ)",
        f"{args.model} per image: {payload['tile_ops']} tile ops (paper {paper['tile_ops']}), "
        f"{payload['image_energy_uj']:.3g} uJ (paper {paper['image_energy_uj']}), "
        f"{payload['image_latency_ms']:.3g} ms (paper {paper['image_latency_ms']})",
    ])
    emit(args, payload, summary)
