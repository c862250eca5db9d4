"""Training and evaluation runs: what ``circuitsim train`` and ``circuitsim evaluate`` do.

A run trains one model on one dataset in one mode:

``float``   plain torch in FP32 (the software reference);
``mixed``   analog forward through surrogate tiles, digital backward, device writes only
            where the accumulated update passes the threshold (``training.optim``);
``naive``   the same analog forward, every device rewritten to its quantized target every
            step (no accumulation);
``qat``     software training with the weights fake-quantized to the chip's levels and
            the programming error injected as noise (``training.qat``), the baseline a
            chip-aware software flow gives; it reads only the table's level count.

The analog modes build a chip (``training.analog.AnalogChip``) from a calibration table,
map the freshly initialized model onto it (every device written once from its floor; not
counted as a training write) and train. After every epoch the run is checkpointed
atomically (``checkpoint.pt`` in the output folder: the configuration, the model's
parameters and buffers, i.e. the high-precision weights, the devices' states and their
device-to-device draws, the per-device write and pulse counters, the optimizer's state with
the accumulators, every random stream, and the history), so an interrupted run resumes
with ``resume=True`` where it stopped, bit for bit (resuming a finished run reports it
without training). The checkpoint file carries a SHA-256 of its content, checked on every
load (``training.checkpoint``): a damaged or cut file is an error, never other weights.

A run fails early and leaves the last checkpoint as it was:

- the output folder is checked for writing (``netlists.files.check_writable_folder``)
  before anything else, so a folder that cannot take files (read-only, full, a file, no
  permission) is an ``OutputError`` naming it and the system's reason, not an error after an
  epoch;
- a run that diverges (a non-finite loss, NaN or inf in an analog layer's input, checked
  once per read before the 8-bit conversion, or in the update of analog weights, checked
  once per layer per step before any device is written) stops with a TrainingError that
  names the epoch and batch and asks for a lower ``--lr``;
- a checkpoint that cannot be written (a full disk) is a TrainingError saying that the
  previous one is intact (it is written atomically; no temporary file is left);
- Ctrl-C raises :class:`TrainingInterrupted`, a ``KeyboardInterrupt`` that carries the
  checkpoint and the epochs it holds, and says how to continue.

Evaluation reads the test split through the same analog path (with read and ADC noise) on
the chip the model was trained on, or, with ``fresh_chip``, on a new simulated chip: new
device-to-device draws, every device written from its floor to the trained weights
(programming error included), no retraining. A ``float`` or ``qat`` model is mapped onto a
chip the same way. On the dataset the run trained on, the test split is the run's own (for
``mnist5k``, the one held out with its ``seed`` and ``test_size``); the result says how many
samples were scored, with which split seed, and which calibration table was read.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from calibration.store import Table, open_table
from netlists.config import SurrogateConfig
from netlists.errors import ConfigError
from netlists.files import check_writable_folder
from training.allocator import keep_freed_memory
from training.analog import PROGRAMMING, AnalogChip, NonFiniteValues, analog_layers, from_digital
from training.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, write_checkpoint
from training.data import Dataset, batches, load_dataset, parse_spec
from training.errors import TrainingError, TrainingInterrupted
from training.models import MODEL_NAMES, build_model
from training.optim import MODES, MixedPrecisionOptimizer
from training.qat import make_quantization_aware

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "TrainingInterrupted", "train",
           "evaluate", "load_checkpoint", "TRAIN_MODES", "DIGITAL_MODES", "OPTIMIZERS",
           "CHECKPOINT_NAME"]

#: The modes that train in software (no chip); ``qat`` still takes its levels from a table.
DIGITAL_MODES = ("float", "qat")
TRAIN_MODES = DIGITAL_MODES + MODES
OPTIMIZERS = ("sgd", "adam", "adamw")
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (saved in its checkpoint)."""

    model: str = "lenet"
    dataset: str = "mnist5k"
    mode: str = "mixed"
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adamw"
    #: the paper's AdamW learning rate: 5 mixed LeNet epochs end within 0.4 point of float
    #: here (1e-3: 2.9 points below, README)
    lr: float = 4e-3
    weight_decay: float = 0.0
    seed: int = 0
    chip_seed: int = 0
    range_margin: float = 3.0
    #: ``qat``: the noise on each quantized weight in training, levels rms (the paper's
    #: programming error, 0.5 level)
    qat_noise: float = 0.5
    read_noise: bool = True
    programming: str = "exact"
    test_size: int | None = None
    #: read and verify noise, write threshold (``[surrogate]`` of a configuration file)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)

    def __post_init__(self) -> None:
        if isinstance(self.surrogate, Mapping):
            object.__setattr__(self, "surrogate", SurrogateConfig.from_dict(self.surrogate))
        if not isinstance(self.surrogate, SurrogateConfig):
            raise ConfigError(f"surrogate = {self.surrogate!r} must be a SurrogateConfig",
                              field="surrogate")
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}: choose one of {list(MODEL_NAMES)}",
                              field="model")
        if self.mode not in TRAIN_MODES:
            raise ConfigError(f"unknown mode {self.mode!r}: choose one of {list(TRAIN_MODES)}",
                              field="mode")
        if self.programming not in PROGRAMMING:
            raise ConfigError(f"unknown programming {self.programming!r}: choose one of "
                              f"{list(PROGRAMMING)}", field="programming")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: choose one of "
                              f"{list(OPTIMIZERS)}", field="optimizer")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} = {value!r} must be a whole number >= 1")
        for name in ("seed", "chip_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} = {value!r} must be a whole number >= 0")
        for name, lo, hi in (("lr", 0.0, 10.0), ("weight_decay", -1e-12, 1.0),
                             ("range_margin", 0.0, 100.0), ("qat_noise", -1e-12, 10.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not lo < value <= hi:
                raise ConfigError(f"{name} = {value!r} is out of range: allowed ({lo:g}, "
                                  f"{hi:g}]")

    @property
    def analog(self) -> bool:
        """Trains on a simulated chip."""
        return self.mode not in DIGITAL_MODES

    @property
    def needs_table(self) -> bool:
        """Reads a calibration table: the analog modes for their chip, ``qat`` for its
        levels."""
        return self.mode != "float"

    @property
    def threshold(self) -> float:
        """The mixed-precision write threshold, fraction of the weight range."""
        return self.surrogate.write_threshold

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """The run's outcome; :meth:`summary` is the ``--json`` contract."""

    config: TrainConfig
    test_accuracy: float
    epochs: int
    seconds_per_epoch: float
    writes: dict[str, Any]
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    #: per analog layer, the write count of every device that holds a weight
    device_writes: dict[str, Any] = field(default_factory=dict)
    #: the calibration table the analog modes ran on (path, content hash); None in float mode
    table: str | None = None
    table_hash: str | None = None
    #: the mean energy of one write pulse from the table's ``energy`` surface, J; None
    #: without a table or an ``energy`` surface
    pulse_energy_j: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.test_accuracy,
            "epochs": self.epochs,
            "seconds_per_epoch": self.seconds_per_epoch,
            "device_writes": self.writes.get("device_writes", 0),
            "write_pulses": self.writes.get("write_pulses", 0),
            "writes_per_device_mean": self.writes.get("writes_per_device_mean", 0.0),
            "writes_per_device_max": self.writes.get("writes_per_device_max", 0),
            "checkpoint": str(self.checkpoint),
            "mode": self.config.mode,
            "model": self.config.model,
            "dataset": self.config.dataset,
            "table": self.table,
            "table_hash": self.table_hash,
            "history": self.history,
            "writes_per_layer": self.writes.get("layers", {}),
            **write_energy(self.writes.get("write_pulses", 0), self.pulse_energy_j),
        }


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device {name!r} is not a torch device ({err})",
                          field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device",
                          field="device")
    return device


def _make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _progress(stream: TextIO, label: str) -> Callable[[int, int, float], None]:
    tty = getattr(stream, "isatty", lambda: False)()
    last = [-1]

    def show(done: int, total: int, loss: float) -> None:
        if tty:
            width = 30
            filled = int(width * done / max(total, 1))
            stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                         f"loss {loss:.4f}")
            if done == total:
                stream.write("\n")
        else:
            decile = 4 * done // max(total, 1)
            if decile != last[0]:
                last[0] = decile
                stream.write(f"{label}: {done}/{total} batches, loss {loss:.4f}\n")
        stream.flush()

    return show


def _reason(err: OSError) -> str:
    where = f": {err.filename}" if err.filename is not None else ""
    return f"{err.strerror or err}{where}"


@torch.no_grad()
def accuracy(model: nn.Module, split: Any, *, batch_size: int = 256,
             device: torch.device | None = None) -> float:
    """Fraction of ``split`` classified correctly (model in eval mode)."""
    was = model.training
    model.eval()
    correct = 0
    for x, y in batches(split, batch_size, shuffle=False, generator=None):
        if device is not None:
            x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was)
    return correct / len(split)


def _chip(cfg: TrainConfig, table: Table, seed: int, device: torch.device,
          read_noise: bool) -> AnalogChip:
    return AnalogChip(table, seed=seed, device=device, read_noise=read_noise,
                      programming=cfg.programming, config=cfg.surrogate)


def _build(cfg: TrainConfig, data: Dataset, device: torch.device, table: Table | None
           ) -> tuple[nn.Module, AnalogChip | None]:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=data.num_classes, input_shape=data.input_shape)
    model.to(device)
    chip = None
    if cfg.needs_table and table is None:
        raise ConfigError(f"mode {cfg.mode!r} needs a calibration table")
    if cfg.analog:
        chip = _chip(cfg, table, cfg.chip_seed, device, cfg.read_noise)
        from_digital(model, chip, range_margin=cfg.range_margin)
    elif cfg.mode == "qat":
        make_quantization_aware(model, levels=_levels(table), noise=cfg.qat_noise)
    return model, chip


def _levels(table: Table) -> int:
    return table.hardware().levels.count


def _read_fractions(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Of the vectors the analog layers read between two counts (``AnalogChip.reads``): the
    fraction whose read reached the ADC's top code, and the fraction left clipped after the
    rereads at halved inputs (``SurrogateConfig.saturation_rereads``)."""
    read = after["vectors"] - before["vectors"]
    if not read:
        return {"saturated_reads": 0.0, "clipped_reads": 0.0}
    return {"saturated_reads": (after["saturated"] - before["saturated"]) / read,
            "clipped_reads": (after["clipped"] - before["clipped"]) / read}


def _rng_state(chip: AnalogChip | None, shuffle: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if chip is not None:
        state["chip"] = chip.generator.get_state()
        state["read_noise"] = chip.noise.state_dict()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], chip: AnalogChip | None,
                   shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if chip is not None and "chip" in state:
        chip.generator.set_state(state["chip"])
    if chip is not None and "read_noise" in state:
        chip.noise.load_state_dict(state["read_noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train`, its checksum verified
    (``training.checkpoint``); TrainingError if it is damaged or not one."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}: train first (`circuitsim train ... "
                            f"--out {path.parent}`)")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a circuitsim training checkpoint (format "
                            f"{ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    return ckpt


def _check_table(ckpt: dict[str, Any], table: Table | None) -> None:
    want = ckpt.get("table_hash")
    if want is None:
        return
    if table is None or table.attrs.get("content_hash") != want:
        have = None if table is None else table.attrs.get("content_hash")
        raise TrainingError(
            f"the checkpoint was trained on calibration {want!r} ({ckpt.get('table_path')}), "
            f"but this run uses {have!r}: pass that table with --table, or start a new run")


def _table_id(table: Table | None) -> tuple[str | None, str | None]:
    """The path and content hash that name a calibration table (None, None without one)."""
    if table is None:
        return None, None
    return str(table.path), table.attrs.get("content_hash")


def _split_options(cfg: TrainConfig, dataset: str) -> dict[str, Any]:
    """``load_dataset``'s split options for ``dataset``: the run's own (its seed and
    test_size) when it is the dataset the run trained on, so that its test split is the one
    held out in training; the defaults for any other."""
    if parse_spec(dataset) == parse_spec(cfg.dataset):
        return {"seed": cfg.seed, "test_size": cfg.test_size}
    return {"seed": 0, "test_size": None}


def _diverged(detail: str, epoch: int, batch: int, cfg: TrainConfig, ckpt_path: Path
              ) -> TrainingError:
    kept = f"the last checkpoint {ckpt_path} is unchanged" if ckpt_path.exists() else \
        "no checkpoint was written yet"
    return TrainingError(f"values became non-finite at epoch {epoch + 1}, batch {batch + 1} "
                         f"({detail}): lower --lr (now {cfg.lr:g}); {kept}")


def _interrupted(epoch: int, kept: int, ckpt_path: Path) -> TrainingInterrupted:
    if not kept:
        return TrainingInterrupted(f"interrupted in epoch {epoch + 1}, before any checkpoint "
                                   "was written: nothing was kept; start the run again",
                                   checkpoint=None, epochs_done=0)
    return TrainingInterrupted(f"interrupted in epoch {epoch + 1}; the checkpoint {ckpt_path} "
                               f"holds {kept} epoch{'s' if kept != 1 else ''}: continue with "
                               "--resume", checkpoint=ckpt_path, epochs_done=kept)


def _save(state: dict[str, Any], ckpt_path: Path, kept: int) -> None:
    try:
        write_checkpoint(state, ckpt_path)
    except OSError as err:
        previous = (f"the previous checkpoint {ckpt_path} ({kept} epochs) is intact: make room "
                    "and continue with --resume") if kept else \
            "there was no earlier checkpoint: make room and train again"
        raise TrainingError(f"the checkpoint {ckpt_path} after epoch {state['epoch']} could not "
                            f"be written ({_reason(err)}); {previous}") from err


def train(cfg: TrainConfig, *, out: Path | str, table: Table | None = None,
          resume: bool = False, device: str = "auto", stream: TextIO = sys.stderr
          ) -> TrainResult:
    """Train ``cfg`` (module docstring); checkpoint in ``out``; returns the summary.

    Ctrl-C raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) that says what the
    checkpoint on disk holds."""
    keep_freed_memory()                    # each step's temporaries reused, not re-faulted
    out = Path(out)
    ckpt_path = out / CHECKPOINT_NAME
    dev = pick_device(device)
    if cfg.needs_table and table is None:
        raise ConfigError(f"mode {cfg.mode!r} needs a calibration table (--table or --preset)")
    check_writable_folder(out, what="--out")
    saved = None
    if resume:
        try:
            saved = load_checkpoint(ckpt_path)
        except TrainingError as err:
            err.field = "out"  # the run folder names the checkpoint to resume
            raise
        if saved["config"] != cfg.to_dict():
            diff = {k: (saved["config"].get(k), v) for k, v in cfg.to_dict().items()
                    if saved["config"].get(k) != v and k != "epochs"}
            if diff:
                raise TrainingError(f"{ckpt_path} is from another configuration "
                                    f"(saved vs asked: {diff}); use another --out or the "
                                    "same options")
        _check_table(saved, table if cfg.needs_table else None)
    elif ckpt_path.exists():
        raise TrainingError(f"{ckpt_path} exists: pass --resume to continue that run, or "
                            "choose another --out (nothing was overwritten)")
    kept = epoch = int(saved["epoch"]) if saved is not None else 0   # epochs on disk
    try:
        data = load_dataset(cfg.dataset, seed=cfg.seed, test_size=cfg.test_size)
        if data.train is None:
            raise ConfigError(f"dataset {cfg.dataset!r} has no training split")
        model, chip = _build(cfg, data, dev, table)
        inner = _make_optimizer(cfg, model.parameters())
        opt: Any = MixedPrecisionOptimizer(model, inner, mode=cfg.mode,
                                           threshold=cfg.threshold) if cfg.analog else inner
        shuffle = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, Any]] = []
        start_epoch = 0
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            _set_rng_state(saved["rng"], chip, shuffle)
            history = list(saved["history"])
            start_epoch = int(saved["epoch"])
            if start_epoch > cfg.epochs:
                raise TrainingError(f"{ckpt_path} already holds {start_epoch} epochs, more "
                                    f"than the {cfg.epochs} asked for: ask for more with "
                                    "--epochs")
        table_path, table_hash = _table_id(table if cfg.needs_table else None)

        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            show = _progress(stream, f"epoch {epoch + 1}/{cfg.epochs} ({cfg.mode})")
            n_batches = math.ceil(len(data.train) / cfg.batch_size)
            t0 = time.perf_counter()
            total_loss = correct = seen = 0
            writes = 0
            reads = dict(chip.reads) if chip is not None else None
            for b, (x, y) in enumerate(batches(data.train, cfg.batch_size, shuffle=True,
                                               generator=shuffle)):
                x, y = x.to(dev), y.to(dev)
                opt.zero_grad()
                try:
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    if not torch.isfinite(loss):
                        raise NonFiniteValues(f"the loss is {float(loss.detach())}")
                    loss.backward()
                    opt.step()
                except NonFiniteValues as err:
                    raise _diverged(str(err), epoch, b, cfg, ckpt_path) from err
                if cfg.analog:
                    writes += opt.step_writes
                total_loss += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                show(b + 1, n_batches, total_loss / seen)
            seconds = time.perf_counter() - t0
            range_note = ""
            if reads is not None:
                saturated = _read_fractions(reads, chip.reads)
                if saturated["saturated_reads"]:
                    range_note = (f", {100 * saturated['saturated_reads']:.2f}% of reads "
                                  f"saturated ({100 * saturated['clipped_reads']:.2f}% "
                                  "clipped)")
            test_acc = accuracy(model, data.test, device=dev)
            entry = {"epoch": epoch + 1, "train_loss": total_loss / seen,
                     "train_accuracy": correct / seen, "test_accuracy": test_acc,
                     "seconds": seconds, "device_writes": writes}
            if reads is not None:
                entry.update(saturated)
            history.append(entry)
            stream.write(f"epoch {epoch + 1}: loss {entry['train_loss']:.4f}, train "
                         f"{100 * entry['train_accuracy']:.2f}%, test {100 * test_acc:.2f}%, "
                         f"{seconds:.1f} s, {writes} device writes{range_note}\n")
            _save({
                "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": _rng_state(chip, shuffle), "history": history,
                "table_path": table_path, "table_hash": table_hash,
                "qat_levels": _levels(table) if cfg.mode == "qat" else None,
                "dataset": {"name": data.name, "num_classes": data.num_classes,
                            "input_shape": list(data.input_shape)},
            }, ckpt_path, kept)
            kept = epoch + 1
    except KeyboardInterrupt as err:
        raise _interrupted(epoch, kept, ckpt_path) from err

    ran = history[start_epoch:] or history
    writes = opt.write_summary() if cfg.analog else {}
    per_device = {name: layer.weight_device_writes().cpu().numpy()
                  for name, layer in analog_layers(model)}
    return TrainResult(config=cfg, test_accuracy=history[-1]["test_accuracy"],
                       epochs=len(history),
                       seconds_per_epoch=sum(h["seconds"] for h in ran) / len(ran),
                       writes=writes, checkpoint=ckpt_path, history=history,
                       device_writes=per_device, table=table_path, table_hash=table_hash,
                       pulse_energy_j=_pulse_energy(table if cfg.needs_table else None))


def _pulse_energy(table: Table | None) -> float | None:
    """The mean energy of one write pulse of ``table`` (J), None where it has no ``energy``
    surface (the write energy is then reported as unknown)."""
    if table is None or "energy" not in table.surfaces:
        return None
    from calibration.energy_model import pulse_energy_j

    return pulse_energy_j(table)


def _age(model: nn.Module, table: Table, after_s: float,
         temperature_k: float | None) -> dict[str, Any]:
    """Every analog layer's devices left alone ``after_s`` at ``temperature_k`` (default
    the device's ambient temperature); the keys the result gains."""
    temp = table.hardware().device.t_ambient_k if temperature_k is None \
        else float(temperature_k)
    layers = [layer for _, layer in analog_layers(model)]
    if layers:
        layers[0].chip.retention.check(float(after_s), temp)   # before any layer moves
    for layer in layers:
        layer.age(float(after_s), temp)
    return {"after_s": float(after_s), "temperature_k": temp}


def write_energy(pulses: int, pulse_energy: float | None) -> dict[str, Any]:
    """``write_energy_uj`` (the pulses times the mean pulse energy of the ``energy``
    surface, uJ; None when that is unknown) and ``pulse_energy_pj``."""
    if pulse_energy is None:
        return {"write_energy_uj": None, "pulse_energy_pj": None}
    return {"write_energy_uj": int(pulses) * pulse_energy * 1e6,
            "pulse_energy_pj": pulse_energy * 1e12}


def evaluate(checkpoint: Path | str, dataset: str, *, table: Table | None = None,
             fresh_chip: int | None = None, device: str = "auto",
             read_noise: bool | None = None, after_s: float | None = None,
             temperature_k: float | None = None,
             loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test accuracy of a checkpoint on ``dataset``'s test split (module docstring).

    On the dataset the run trained on, the test split is the run's own (for ``mnist5k``:
    the one its ``seed`` and ``test_size`` held out, never its training digits); on another
    dataset, that dataset's default split. ``table``: the calibration for a ``float``
    checkpoint mapped onto a chip, or to find an analog checkpoint's table if it moved (its
    content hash must match). ``fresh_chip``: the seed of a new simulated chip to program the
    trained weights onto first. ``read_noise``: draw read noise (default: as in training).
    The result names the test split (``test_samples``, ``split_seed``: None for a dataset
    with a fixed split) and the table used (``table``, ``table_hash``: None when none was).
    ``loaded``: what :func:`load_checkpoint` already read from ``checkpoint`` (saves
    reading and hashing it again). ``after_s``: evaluate that long after programming (the
    end of training, or the fresh chip's programming), the devices left alone at
    ``temperature_k`` (default the device's ambient temperature) and drifting as the
    table's ``retention`` surface says; the result gains ``after_s`` and ``temperature_k``.
    """
    keep_freed_memory()
    ckpt = loaded if loaded is not None else load_checkpoint(checkpoint)
    cfg = TrainConfig(**ckpt["config"])
    if after_s is None and temperature_k is not None:
        raise ConfigError("a temperature only matters with a time after programming: give "
                          "--after too", field="temperature")
    if after_s is not None and not cfg.analog and fresh_chip is None:
        raise ConfigError(f"a {cfg.mode} checkpoint holds no programmed devices to drift: "
                          "give --fresh-chip SEED to program it onto a chip first",
                          field="after")
    if read_noise is None:
        read_noise = cfg.read_noise
    dev = pick_device(device)
    split = _split_options(cfg, dataset)
    data = load_dataset(dataset, need_train=False, **split)
    saved_ds = ckpt.get("dataset", {})
    if saved_ds and (list(data.input_shape) != saved_ds.get("input_shape")
                     or data.num_classes != saved_ds.get("num_classes")):
        raise ConfigError(f"dataset {dataset!r} has inputs {list(data.input_shape)} and "
                          f"{data.num_classes} classes; the checkpoint was trained on "
                          f"{saved_ds.get('name')!r} with {saved_ds.get('input_shape')} and "
                          f"{saved_ds.get('num_classes')}")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=data.num_classes, input_shape=data.input_shape)
    model.to(dev)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "mode": cfg.mode,
                              "dataset": dataset, "fresh_chip": fresh_chip,
                              "test_samples": len(data.test),
                              "split_seed": split["seed"] if data.name == "mnist5k" else None}
    pulses = 0
    if cfg.analog:
        if table is None:
            path = ckpt.get("table_path")
            if not path or not Path(path).exists():
                raise TrainingError(f"the checkpoint's calibration table {path} is missing: "
                                    "pass it with --table (same content hash)")
            table = open_table(path)
        _check_table(ckpt, table)
        chip = _chip(cfg, table, cfg.chip_seed, dev, read_noise)
        from_digital(model, chip, range_margin=cfg.range_margin)
        model.load_state_dict(ckpt["model"])              # the layers prepare their tiles anew
        if fresh_chip is not None:
            fresh = _chip(cfg, table, fresh_chip, dev, read_noise)
            for _, layer in analog_layers(model):
                pulses += layer.reprogram_fresh(fresh).pulses
    else:
        model.load_state_dict(ckpt["model"])
        if fresh_chip is not None:
            if table is None:
                raise ConfigError(f"a {cfg.mode} checkpoint needs a calibration table "
                                  "(--table or --preset) to be programmed onto a chip")
            chip = _chip(cfg, table, fresh_chip, dev, read_noise)
            from_digital(model, chip, range_margin=1.0)
            pulses += sum(layer.mapping_pulses for _, layer in analog_layers(model))
        else:
            table = None                                   # software weights read no table
            if cfg.mode == "qat":                          # on its levels, without noise
                make_quantization_aware(model, levels=int(ckpt["qat_levels"]),
                                        noise=cfg.qat_noise)
    if after_s is not None:
        result.update(_age(model, table, after_s, temperature_k))
    result["test_accuracy"] = accuracy(model, data.test, device=dev)
    result["table"], result["table_hash"] = _table_id(table)
    # the writes this evaluation did: programming onto a fresh chip (none without one)
    result["write_pulses"] = pulses
    result.update(write_energy(pulses, _pulse_energy(table)))
    return result
