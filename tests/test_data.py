"""secateur.data: real Fashion-MNIST files, CIFAR binary files and ImageFolder trees written here."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from secateur.data import DataError, TensorImages, calibration, cifar, fashion_mnist, image_folder
from secateur.data._fashion import DEFAULT_ROOT

requires_fmnist = pytest.mark.skipif(
    not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed (make setup)",
)


@pytest.fixture(scope="module")
def fm_train() -> TensorImages:
    return fashion_mnist("train")


@pytest.fixture(scope="module")
def fm_test() -> TensorImages:
    return fashion_mnist("test")


def to_uint8(x: torch.Tensor, ds: TensorImages) -> torch.Tensor:
    """Undo the normalisation of a (batch of) item(s): back to the stored pixel bytes."""
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def is_pad_crop_flip_of(aug: torch.Tensor, orig: torch.Tensor, pad: int = 4) -> bool:
    """Whether uint8 C×H×W ``aug`` is a (possibly flipped) H×W crop of ``orig`` zero-padded by ``pad``."""
    _, h, w = orig.shape
    padded = torch.nn.functional.pad(orig, (pad,) * 4)
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return any(torch.equal(aug, c) or torch.equal(aug, c.flip(-1)) for c in crops)


# ---------------------------------------------------------------- Fashion-MNIST (real files)

@requires_fmnist
def test_fashion_mnist_sizes_and_balanced_labels(fm_train, fm_test):
    assert (len(fm_train), len(fm_test)) == (60000, 10000)
    assert fm_train.labels.bincount().tolist() == [6000] * 10
    assert fm_test.labels.bincount().tolist() == [1000] * 10
    assert (fm_train.num_classes, fm_train.in_channels, fm_train.image_size) == (10, 1, 28)
    assert fm_train.classes[0] == "T-shirt/top" and fm_train.classes[9] == "Ankle boot"
    assert (fm_train.augment, fm_test.augment) == (True, False)


@requires_fmnist
def test_fashion_mnist_items_are_normalised(fm_test):
    x, y = fm_test[0]
    assert (x.dtype, tuple(x.shape), type(y)) == (torch.float32, (1, 28, 28), int)
    batch = torch.stack([fm_test[i][0] for i in range(0, 10000, 25)])  # 400 items
    assert abs(batch.mean().item()) < 0.05
    assert abs(batch.std().item() - 1) < 0.1
    assert torch.equal(to_uint8(x, fm_test), fm_test.images[0])


@requires_fmnist
def test_augmentation_is_pad_crop_flip_and_keeps_shape(fm_train):
    plain = fm_train.with_augment(False)
    assert plain.images is fm_train.images  # a view, not a copy
    torch.manual_seed(0)
    idx = list(range(40))
    batched = torch.stack([x for x, _ in fm_train.__getitems__(idx)])
    single = torch.stack([fm_train[i][0] for i in idx])
    for aug in (batched, single):
        assert aug.shape == (40, 1, 28, 28)
        assert not torch.equal(aug, torch.stack([plain[i][0] for i in idx]))
        u8 = to_uint8(aug, fm_train)
        assert all(is_pad_crop_flip_of(u8[i], fm_train.images[i]) for i in idx)


@requires_fmnist
def test_seeded_loader_is_reproducible(fm_train):
    def first_batch(seed):
        torch.manual_seed(seed)
        return next(iter(DataLoader(fm_train, batch_size=128, shuffle=True)))

    (x1, y1), (x2, y2), (x3, _) = first_batch(7), first_batch(7), first_batch(8)
    assert x1.shape == (128, 1, 28, 28) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


# ---------------------------------------------------------------- CIFAR binary

def write_records(path: Path, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Write CIFAR records with label columns ``labels`` (N×k); return the N×3×32×32 pixels."""
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    path.write_bytes(np.concatenate([labels.astype(np.uint8), pixels], axis=1).tobytes())
    return pixels.reshape(-1, 3, 32, 32)


@pytest.fixture
def cifar10_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    written = {}
    for name, n in [(f"data_batch_{i}.bin", 2) for i in range(1, 6)] + [("test_batch.bin", 3)]:
        labels = rng.integers(0, 10, size=(n, 1))
        written[name] = (labels[:, 0], write_records(folder / name, labels, rng))
    return folder, written


def test_cifar10_labels_and_pixel_layout(cifar10_dir):
    folder, written = cifar10_dir
    train = cifar(folder.parent, "train")  # the parent folder works too
    assert (len(train), train.num_classes, train.in_channels, train.image_size) == (10, 10, 3, 32)
    assert train.augment and train.classes[0] == "airplane"
    want_labels = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    assert train.labels.tolist() == want_labels.tolist()
    test = cifar(folder, "test")
    labels, pixels = written["test_batch.bin"]
    assert (len(test), test.augment) == (3, False)
    assert test.labels.tolist() == labels.tolist()
    assert torch.equal(test.images, torch.from_numpy(pixels))
    x, y = test[2]
    assert (tuple(x.shape), x.dtype, y) == ((3, 32, 32), torch.float32, int(labels[2]))
    assert torch.equal(to_uint8(x, test), torch.from_numpy(pixels[2]))
    assert to_uint8(x, test)[0, 0, 1] == pixels[2].reshape(-1)[1]  # channel-major: red row 0 first


def test_cifar10_class_names_from_meta_file(cifar10_dir):
    folder, _ = cifar10_dir
    (folder / "batches.meta.txt").write_text("".join(f"c{i}\n" for i in range(10)) + "\n\n")
    assert cifar(folder, "test").classes == tuple(f"c{i}" for i in range(10))


def test_cifar100_uses_fine_label(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    coarse, fine = rng.integers(0, 20, size=5), np.array([0, 99, 42, 7, 63])
    pixels = write_records(folder / "train.bin", np.stack([coarse, fine], axis=1), rng)
    write_records(folder / "test.bin", np.array([[3, 55]]), rng)
    train = cifar(tmp_path, "train", augment=False)
    assert (len(train), train.num_classes, train.classes) == (5, 100, None)
    assert train.labels.tolist() == fine.tolist()
    assert torch.equal(to_uint8(train[4][0], train), torch.from_numpy(pixels[4]))
    assert cifar(folder, "test").labels.tolist() == [55]
    assert train.mean == pytest.approx((0.5071, 0.4865, 0.4409))


def test_cifar_errors(cifar10_dir, tmp_path):
    folder, _ = cifar10_dir
    with pytest.raises(DataError, match="not found"):
        cifar(tmp_path / "nowhere", "train")
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"pickle")
    with pytest.raises(DataError, match="pickled"):
        cifar(tmp_path / "cifar-10-batches-py", "train")
    (folder / "test_batch.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(DataError, match=r"test_batch\.bin.*3073-byte records") as e:
        cifar(folder, "test")
    assert "\n" not in str(e.value)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"data_batch_3\.bin"):
        cifar(folder, "train")
    with pytest.raises(DataError, match="split"):
        cifar(folder, "val")


# ---------------------------------------------------------------- ImageFolder

@pytest.fixture
def folder_tree(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    return tmp_path


def test_image_folder_splits_and_shapes(folder_tree):
    train = image_folder(folder_tree, "train", image_size=16)
    assert (len(train), train.classes, train.num_classes, train.in_channels) == (6, ["cat", "dog"], 2, 3)
    assert (train.image_size, train.augment) == (16, True)
    x, y = train[5]
    assert (tuple(x.shape), x.dtype, y) == ((3, 16, 16), torch.float32, 1)
    val = image_folder(folder_tree, "test", image_size=16)  # "test" falls back to val/
    assert (len(val), val.augment) == (4, False)
    assert torch.equal(val[0][0], val[0][0])  # eval transform is deterministic
    plain = train.with_augment(False)
    assert (plain.augment, train.augment, len(plain)) == (False, True, 6)
    assert torch.equal(plain[1][0], plain[1][0])
    single = image_folder(folder_tree / "val", "train", image_size=8)  # a bare class-folder tree
    assert (len(single), tuple(single[0][0].shape)) == (4, (3, 8, 8))


def test_image_folder_errors(folder_tree, tmp_path):
    with pytest.raises(DataError, match="not found"):
        image_folder(tmp_path / "nowhere", "train")
    shutil.rmtree(folder_tree / "val")
    with pytest.raises(DataError, match=r"no val/ or test/"):
        image_folder(folder_tree, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder"):
        image_folder(tmp_path / "empty", "train")
    with pytest.raises(DataError, match="image_size"):
        image_folder(folder_tree, "train", image_size=0)


# ---------------------------------------------------------------- Fashion-MNIST errors

def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path)
    with pytest.raises(DataError, match="split"):
        fashion_mnist("val", root=tmp_path)


@requires_fmnist
def test_fashion_mnist_truncated_gzip(tmp_path):
    name = "t10k-images-idx3-ubyte.gz"
    (tmp_path / name).write_bytes((DEFAULT_ROOT / name).read_bytes()[:5000])
    with pytest.raises(DataError, match=name) as e:
        fashion_mnist("test", root=tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, message", [
    (bytes([0, 0, 8, 3]) + np.array([10, 28, 28], ">u4").tobytes() + bytes(100), "header says"),
    (bytes([0, 0, 13, 3]) + np.array([1, 2, 2], ">u4").tobytes() + bytes(16), "magic"),
    (bytes([0, 0, 8]), "header"),
])
def test_fashion_mnist_malformed_idx(tmp_path, content, message):
    name = "t10k-images-idx3-ubyte.gz"
    (tmp_path / name).write_bytes(gzip.compress(content))
    with pytest.raises(DataError, match=rf"{name}.*{message}"):
        fashion_mnist("test", root=tmp_path)


def test_tensor_images_validates_labels():
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        TensorImages(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 3]), 3, (0.5,), (0.5,))


# ---------------------------------------------------------------- calibration

@requires_fmnist
def test_calibration_is_fixed_and_unaugmented(fm_train):
    calib = calibration(fm_train, 100, seed=3, batch_size=32)
    first = [x for x, _ in calib]
    assert [len(x) for x in first] == [32, 32, 32, 4]
    assert all(torch.equal(a, b) for a, (b, _) in zip(first, calib))  # a second pass is identical
    drawn = np.random.default_rng(3).choice(60000, size=100, replace=False)
    expected = torch.stack([fm_train.with_augment(False)[int(i)][0] for i in drawn])
    assert torch.equal(torch.cat(first), expected)
    assert fm_train.augment  # the caller's data set keeps its augmentation
    other = torch.cat([x for x, _ in calibration(fm_train, 100, seed=4)])
    assert not torch.equal(other, expected)


def test_calibration_bad_n_and_folder_view(folder_tree):
    train = image_folder(folder_tree, "train", image_size=8)
    with pytest.raises(DataError, match="n=7"):
        calibration(train, 7)
    with pytest.raises(DataError, match="n=0"):
        calibration(train, 0)
    calib = calibration(train, 6, batch_size=4)
    assert calib.dataset.dataset.augment is False
    a, b = (torch.cat([x for x, _ in calib]) for _ in range(2))
    assert a.shape == (6, 3, 8, 8) and torch.equal(a, b)
