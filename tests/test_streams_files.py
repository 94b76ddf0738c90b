"""File-backed vision streams on tiny files made here: idx (Fashion-MNIST), CIFAR-10
python batches (and pickles that must be refused), CIFAR-5m npz parts, image folders;
augmentation; one-line errors that name the path."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from widthwise.errors import UserError
from widthwise.streams import STREAMS
from widthwise.streams.augment import crop_flip
from widthwise.streams.base import rng_for
from widthwise.streams.cifar5m import _load_cifar5m
from widthwise.streams.idx import FASHION_MNIST_DIR, read_idx


def build(name: str, seed: int = 0, **options):
    return STREAMS.get(name)(seed, STREAMS.validate_options(name, options))


def one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- idx / fashion_mnist ------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C}
    a = np.asarray(array)
    dt = np.dtype("u1") if a.dtype == np.uint8 else np.dtype(">i4")
    raw = bytes([0, 0, codes[dt], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    raw += a.astype(dt).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fashion_dir(root: Path, n_train: int = 40, n_test: int = 12, gz: bool = False) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for part, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            root / f"{part}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 8, 8), dtype=np.uint8),
            gz,
        )
        write_idx(
            root / f"{part}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8), gz
        )
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a", a, gz)), a)
    b = np.array([-5, 7, 1 << 20], dtype=np.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b", b, gz)), b)


def test_read_idx_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01x")
    assert str(bad) in one_line_error("not an idx file", read_idx, bad)
    short = write_idx(tmp_path / "short", np.zeros((3, 4), np.uint8))
    short.write_bytes(short.read_bytes()[:-2])
    assert str(short) in one_line_error(r"shape \(3, 4\) \(12 bytes", read_idx, short)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 20)[:-6])
    assert str(broken_gz) in one_line_error("gzip", read_idx, broken_gz)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_idx_files(tmp_path: Path, gz: bool) -> None:
    d = fashion_dir(tmp_path / "fm", gz=gz)
    s = build("fashion_mnist", path=str(d))
    assert s.in_shape == (1, 8, 8) and s.out_dim == 10 and s.loss == "cross_entropy"
    x, y = s.batch(0, 16)
    assert x.shape == (16, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, build("fashion_mnist", path=str(d)).batch(0, 16)[0])
    px, py = s.probe_set(12)
    assert sorted(py.tolist()) == sorted((np.arange(12) % 10).tolist())  # the whole test split
    # per-channel standardization over the training images
    all_x = s.train_eval_set(40)[0]
    assert abs(all_x.mean()) < 1e-5 and all_x.std() == pytest.approx(1.0, rel=1e-4)


def test_fashion_mnist_missing_and_malformed_files(tmp_path: Path) -> None:
    msg = one_line_error("does not exist", build, "fashion_mnist", path=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in msg
    d = fashion_dir(tmp_path / "fm")
    (d / "t10k-labels-idx1-ubyte").unlink()
    msg = one_line_error(
        "no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz",
        build,
        "fashion_mnist",
        path=str(d),
    )
    assert str(d) in msg
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))  # 5 labels, 12 images
    one_line_error("has 5 labels but .* has 12 images", build, "fashion_mnist", path=str(d))
    write_idx(d / "t10k-labels-idx1-ubyte", np.full(12, 10, dtype=np.uint8))
    one_line_error(
        r"labels in \[10, 10\]; expected classes 0..9", build, "fashion_mnist", path=str(d)
    )


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_on_the_debian_files() -> None:
    s = build("fashion_mnist")
    facts = s.describe()
    assert facts["train_examples"] == 60_000 and facts["test_examples"] == 10_000
    assert s.in_shape == (1, 28, 28)
    assert facts["channel_mean"][0] == pytest.approx(0.286, abs=0.005)  # Fashion-MNIST's mean
    x, y = s.batch(3, 64)
    np.testing.assert_array_equal(x, build("fashion_mnist").batch(3, 64)[0])
    assert set(np.unique(s.probe_set(1000)[1])) == set(range(10))


# -- CIFAR-10 ------------------------------------------------------------------------


def write_cifar_batch(path: Path, n: int, seed: int, protocol: int = 2) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {
        b"batch_label": b"training batch",
        b"labels": [int(i % 10) for i in range(n)],
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return data


def cifar_dir(root: Path, protocol: int = 2) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(d / f"data_batch_{i}", 8, i, protocol)
    write_cifar_batch(d / "test_batch", 10, 9, protocol)
    return d


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_reads_the_python_batches(tmp_path: Path, protocol: int) -> None:
    d = cifar_dir(tmp_path, protocol)
    s = build("cifar10", path=str(tmp_path), normalize=False)  # the parent directory works too
    assert s.in_shape == (3, 32, 32) and s.describe()["train_examples"] == 40
    # rows are 1024 red, 1024 green, 1024 blue values, each row-major 32 × 32
    first = write_cifar_batch(tmp_path / "again", 8, 1)
    tx, _ = s.train_eval_set(40)
    match = [
        i
        for i in range(40)
        if np.array_equal(np.rint(tx[i] * 255).astype(np.uint8), first[0].reshape(3, 32, 32))
    ]
    assert match, "first image of data_batch_1 not found with (3, 32, 32) layout"
    assert np.array_equal(
        np.rint(tx[match[0], 1] * 255).astype(np.uint8), first[0, 1024:2048].reshape(32, 32)
    )
    assert build("cifar10", path=str(d)).probe_set(10)[1].tolist() != []


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 batch pickled as Python 2's cPickle (protocol 2, str = bytes) writes it."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", v)

    n = len(data)
    out = b"\x80\x02}(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b")
    out += b"\x87R(" + i(1) + i(n) + i(3072) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + b"\x89\x88\x87R"
    out += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    out += b"\x89" + s(data.tobytes()) + b"tb"
    out += s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
    return out + s(b"batch_label") + s(b"training batch 1 of 5") + b"u."


def test_cifar10_reads_python2_pickles(tmp_path: Path) -> None:
    d = cifar_dir(tmp_path)
    data = np.random.default_rng(3).integers(0, 256, (8, 3072), dtype=np.uint8)
    (d / "test_batch").write_bytes(python2_batch(data, [3, 1, 4, 1, 5, 9, 2, 6]))
    s = build("cifar10", path=str(d), normalize=False)
    x, y = s.probe_set(8)
    order = rng_for(0, 2**31 - 1).permutation(8)
    np.testing.assert_array_equal(y, np.array([3, 1, 4, 1, 5, 9, 2, 6])[order])
    np.testing.assert_array_equal(
        np.rint(x * 255).astype(np.uint8), data[order].reshape(8, 3, 32, 32)
    )


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("kind", ["os.system", "eval", "nested"])
def test_cifar10_refuses_malicious_pickles(tmp_path: Path, kind: str) -> None:
    d = cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    payload = {"os.system": Evil(marker), "eval": EvalEvil(), "nested": None}[kind]
    if kind == "nested":  # a valid-looking batch whose labels hide the payload
        payload = {b"data": np.zeros((8, 3072), np.uint8), b"labels": [Evil(marker)] * 8}
    (d / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=2))
    msg = one_line_error("refused", build, "cifar10", path=str(d))
    assert str(d / "data_batch_3") in msg
    assert not marker.exists(), "the pickle's code ran"


def test_cifar10_missing_and_malformed_batches(tmp_path: Path) -> None:
    d = cifar_dir(tmp_path)
    (d / "data_batch_2").write_bytes(b"garbage, not a pickle")
    assert str(d / "data_batch_2") in one_line_error(
        "is not a CIFAR-10 python batch", build, "cifar10", path=str(d)
    )
    (d / "data_batch_2").write_bytes(
        pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})
    )
    one_line_error(r"data of shape \(4, 100\)", build, "cifar10", path=str(d))
    (d / "data_batch_2").write_bytes(pickle.dumps([1, 2, 3]))
    one_line_error("no data array or no labels", build, "cifar10", path=str(d))
    (d / "data_batch_2").unlink()
    assert str(d) in one_line_error("no data_batch_2 in", build, "cifar10", path=str(d))


# -- CIFAR-5m ------------------------------------------------------------------------


def write_part(
    path: Path, n: int, seed: int, compressed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    (np.savez_compressed if compressed else np.savez)(path, X=x, Y=y)
    return x, y


def test_cifar5m_converts_once_and_memory_maps(tmp_path: Path) -> None:
    d = tmp_path / "c5m"
    d.mkdir()
    x0, y0 = write_part(d / "cifar5m_part0.npz", 30, 0)
    x1, y1 = write_part(d / "cifar5m_part1.npz", 20, 1, compressed=True)
    cache = tmp_path / "cache"
    s = build("cifar5m", path=str(d), cache_dir=str(cache), normalize=False)
    assert s.in_shape == (3, 32, 32)
    facts = s.describe()
    assert (
        facts["train_examples"] == 30 and facts["test_examples"] == 20 and facts["test_part"] == 1
    )
    conv = np.load(cache / "cifar5m_part0.x.npy", mmap_mode="r")
    assert isinstance(conv, np.memmap) and conv.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(conv, x0.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    px, py = s.probe_set(20)  # the test part
    order = rng_for(0, 2**31 - 1).permutation(20)
    np.testing.assert_array_equal(py, y1[order])
    np.testing.assert_array_equal(
        np.rint(px * 255).astype(np.uint8), x1[order].transpose(0, 3, 1, 2)
    )
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]
    # second build: no conversion (files untouched); a newer part is converted again
    stamp = (cache / "cifar5m_part0.x.npy").stat().st_mtime_ns
    _load_cifar5m.cache_clear()  # as a new process would
    build("cifar5m", path=str(d), cache_dir=str(cache), normalize=False, train_size=10)
    assert (cache / "cifar5m_part0.x.npy").stat().st_mtime_ns == stamp
    x0b, _ = write_part(d / "cifar5m_part0.npz", 30, 7)
    os.utime(d / "cifar5m_part0.npz", ns=(stamp + 10**9, stamp + 10**9))
    build("cifar5m", path=str(d), cache_dir=str(cache), normalize=False)
    np.testing.assert_array_equal(np.load(cache / "cifar5m_part0.x.npy"), x0b.transpose(0, 3, 1, 2))
    # memory-mapped rows pickle as their path, not their contents
    assert len(pickle.dumps(s.data.train.x)) < 2000


def test_cifar5m_single_part_holds_out_examples(tmp_path: Path) -> None:
    write_part(tmp_path / "cifar5m_part0.npz", 50, 0)
    s = build("cifar5m", path=str(tmp_path), holdout=10)  # cache next to the parts
    assert s.describe()["test_examples"] == 10 and s.describe()["train_examples"] == 40
    assert (tmp_path / "cifar5m_part0.x.npy").exists()


def test_cifar5m_errors_name_the_part(tmp_path: Path) -> None:
    assert str(tmp_path) in one_line_error("no cifar5m_part", build, "cifar5m", path=str(tmp_path))
    bad = tmp_path / "cifar5m_part0.npz"
    bad.write_bytes(b"not a zip")
    assert str(bad) in one_line_error("not a readable .npz", build, "cifar5m", path=str(tmp_path))
    np.savez(bad, images=np.zeros((2, 32, 32, 3), np.uint8), Y=np.zeros(2, np.int64))
    assert str(bad) in one_line_error("has no array 'X'", build, "cifar5m", path=str(tmp_path))
    np.savez(bad, X=np.zeros((2, 32, 32), np.uint8), Y=np.zeros(2, np.int64))
    one_line_error(r"X of shape \(2, 32, 32\)", build, "cifar5m", path=str(tmp_path))
    np.savez(bad, X=np.zeros((2, 32, 32, 3), np.uint8), Y=np.zeros(3, np.int64))
    one_line_error("2 images but 3 labels", build, "cifar5m", path=str(tmp_path))


# -- image folders -------------------------------------------------------------------


def image_tree(root: Path, classes=("cat", "dog", "emu"), per_class: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            a[..., 0] = 40 * k  # the red channel marks the class
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


def test_image_folder(tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="Pillow (widthwise[images]) not installed")
    root = image_tree(tmp_path / "imgs")
    s = build("image_folder", path=str(root), size=8, holdout=6, normalize=False)
    assert s.in_shape == (3, 8, 8) and s.out_dim == 3
    assert s.describe()["class_names"] == ["cat", "dog", "emu"]
    x, y = s.train_eval_set(100)
    assert len(y) == 12
    np.testing.assert_array_equal(np.rint(x[:, 0, 0, 0] * 255), 40 * y)  # class from its dir
    gray = build("image_folder", path=str(root), size=5, channels=1, holdout=3)
    assert gray.in_shape == (1, 5, 5)
    # train/val layout; a cache directory of decoded arrays
    split = tmp_path / "split"
    image_tree(split / "train")
    image_tree(split / "val", classes=("dog",), per_class=2)
    cache = tmp_path / "cache"
    s = build("image_folder", path=str(split), size=8, cache_dir=str(cache))
    assert s.describe()["test_examples"] == 2 and set(s.probe_set(2)[1].tolist()) == {1}
    assert len(list(cache.glob("image_folder-*.npy"))) == 4


def test_image_folder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("PIL", reason="Pillow (widthwise[images]) not installed")
    root = image_tree(tmp_path / "imgs")
    (root / "dog" / "3.png").write_bytes(b"not a png")
    assert str(root / "dog" / "3.png") in one_line_error(
        "not a readable image", build, "image_folder", path=str(root)
    )
    (root / "empty").mkdir()
    assert str(root / "empty") in one_line_error(
        "has no images", build, "image_folder", path=str(root)
    )


def test_image_folder_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "PIL", None)
    one_line_error(
        r"needs Pillow .* pip install 'widthwise\[images\]'",
        build,
        "image_folder",
        path=str(tmp_path),
    )


# -- augmentation ----------------------------------------------------------------------


def test_crop_flip_matches_a_loop_of_torchvision_style_crops() -> None:
    images = np.random.default_rng(1).integers(1, 256, (64, 3, 8, 8), dtype=np.uint8)
    out = crop_flip(images, np.random.default_rng(5), padding=4)
    rng = np.random.default_rng(5)
    top, left, flip = rng.integers(0, 9, 64), rng.integers(0, 9, 64), rng.random(64) < 0.5
    for i in range(64):
        padded = np.pad(images[i], ((0, 0), (4, 4), (4, 4)))
        want = padded[:, top[i] : top[i] + 8, left[i] : left[i] + 8]
        np.testing.assert_array_equal(out[i], want[:, :, ::-1] if flip[i] else want)
    assert 10 < flip.sum() < 54 and (out == 0).any()  # flips happen; padding shows up
    assert (out != images).any(axis=(1, 2, 3)).mean() > 0.9


def test_augmented_batches_are_deterministic(tmp_path: Path) -> None:
    d = fashion_dir(tmp_path / "fm", n_train=64)
    a = build("fashion_mnist", path=str(d), augment="crop_flip")
    b = build("fashion_mnist", path=str(d), augment="crop_flip")
    plain = build("fashion_mnist", path=str(d))
    fwd = [a.batch(t, 32)[0] for t in range(4)]
    bwd = [b.batch(t, 32)[0] for t in (3, 1, 2, 0)]
    for t, x in zip((3, 1, 2, 0), bwd):
        np.testing.assert_array_equal(fwd[t], x)
    np.testing.assert_array_equal(a.batch(2, 32)[0], fwd[2])  # again, after other calls
    assert not np.array_equal(fwd[0], fwd[1])
    # the same examples as without augmentation (same draws), but transformed
    xa, ya = a.batch(0, 32)
    xp, yp = plain.batch(0, 32)
    np.testing.assert_array_equal(ya, yp)
    assert (xa != xp).any(axis=(1, 2, 3)).mean() > 0.8
    # the probe set is never augmented
    np.testing.assert_array_equal(a.probe_set(12)[0], plain.probe_set(12)[0])


def test_autoaugment_without_torchvision_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", None)
    d = fashion_dir(tmp_path / "fm")
    one_line_error(
        r"autoaugment needs torchvision.*widthwise\[vision\]",
        build,
        "fashion_mnist",
        path=str(d),
        augment="autoaugment",
    )


def test_autoaugment_is_seeded_from_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a stand-in for torchvision's AutoAugment (which draws from torch's global
    generator): augmented batches are deterministic and the global generator is untouched."""
    import torch

    class FakeAutoAugment:
        def __init__(self, policy: str) -> None:
            assert policy == "imagenet"

        def __call__(self, img: torch.Tensor) -> torch.Tensor:
            assert img.dtype == torch.uint8 and img.ndim == 3  # (C, H, W), as torchvision's
            return (img.to(torch.int64) + torch.randint(0, 60, (1,))).clamp(0, 255).to(torch.uint8)

    transforms = types.SimpleNamespace(
        AutoAugment=FakeAutoAugment, AutoAugmentPolicy=types.SimpleNamespace(IMAGENET="imagenet")
    )
    fake = types.ModuleType("torchvision")
    fake.transforms = transforms  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    d = fashion_dir(tmp_path / "fm", n_train=64)
    a = build("fashion_mnist", path=str(d), augment="autoaugment")
    b = build("fashion_mnist", path=str(d), augment="autoaugment")
    crop = build("fashion_mnist", path=str(d), augment="crop_flip")
    state = torch.random.get_rng_state()
    xa = [a.batch(t, 16)[0] for t in range(3)]
    assert torch.equal(torch.random.get_rng_state(), state)
    for t in (2, 0, 1):
        np.testing.assert_array_equal(b.batch(t, 16)[0], xa[t])
    assert not np.array_equal(xa[0], xa[1])
    assert not np.array_equal(xa[0], crop.batch(0, 16)[0])  # crop/flip, then AutoAugment


def test_image_folder_needs_two_classes(tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="Pillow (widthwise[images]) not installed")
    root = image_tree(tmp_path / "one", classes=("cat",))
    assert str(root) in one_line_error("has one class", build, "image_folder", path=str(root))
