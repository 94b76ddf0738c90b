"""idx files (the MNIST format) and the ``fashion_mnist`` stream.

idx layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dims, each dim as a
big-endian uint32, then the data, big-endian, row-major. Files may be gzipped
(detected from their content, whatever their name).
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
from pydantic import Field

from widthwise.errors import UserError
from widthwise.streams._io import expand, require_dir, signature
from widthwise.streams.base import STREAMS, Stream
from widthwise.streams.finite import (
    ArrayRows,
    FiniteImageStream,
    ImageData,
    ImageOptions,
    Split,
    check_labels,
)

IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """The array in an idx file (plain or gzipped); a one-line UserError if it is not one."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    except (EOFError, zlib.error) as err:
        raise UserError(f"{path}: not a readable gzip file ({err}); expected an idx file") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES:
        raise UserError(
            f"{path}: not an idx file (expected two zero bytes, a type byte and the number "
            "of dims, as in the MNIST/Fashion-MNIST files)"
        )
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise UserError(f"{path}: idx header truncated (expected {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - start != expected:
        raise UserError(
            f"{path}: idx header says shape {tuple(dims)} ({expected} bytes of data) but the "
            f"file holds {len(raw) - start} bytes after the header"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))
    )


def find_idx(stream: str, directory: Path, stem: str) -> Path:
    """``directory/stem`` or ``directory/stem.gz``; a UserError naming both if neither exists."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise UserError(
        f"{stream}: no {stem} or {stem}.gz in {directory} (expected the Fashion-MNIST idx "
        "files; on Debian/Ubuntu apt-get install dataset-fashion-mnist, or set data.options.path)"
    )


def read_images(stream: str, path: Path) -> np.ndarray:
    x = read_idx(path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise UserError(
            f"{stream}: {path} holds an array of shape {x.shape} and dtype {x.dtype}; "
            "expected uint8 images (N, H, W)"
        )
    return x[:, None]  # (N, 1, H, W)


@functools.lru_cache(maxsize=2)
def _load_fashion_mnist(directory: str, _signature: str) -> ImageData:
    d = Path(directory)
    files = {k: find_idx("fashion_mnist", d, stem) for k, stem in FASHION_MNIST_FILES.items()}
    splits = []
    for part in ("train", "test"):
        x = read_images("fashion_mnist", files[f"{part}_x"])
        y = check_labels("fashion_mnist", files[f"{part}_y"], read_idx(files[f"{part}_y"]), 10)
        if len(y) != len(x):
            raise UserError(
                f"fashion_mnist: {files[f'{part}_y']} has {len(y)} labels but "
                f"{files[f'{part}_x']} has {len(x)} images; expected one label per image"
            )
        splits.append(Split(ArrayRows(x), y))
    return ImageData(
        splits[0], splits[1], 10, str(d), {"files": sorted(p.name for p in files.values())}
    )


class FashionMNISTOptions(ImageOptions):
    """Options of the ``fashion_mnist`` stream."""

    path: str = Field(
        FASHION_MNIST_DIR,
        description="directory of the four idx files, plain or .gz (default: Debian's)",
    )


@STREAMS.register("fashion_mnist", options=FashionMNISTOptions, loss="cross_entropy")
def build_fashion_mnist(seed: int, options: FashionMNISTOptions) -> Stream:
    """Fashion-MNIST from local idx files: (1, 28, 28) images, 10 classes (cross-entropy)."""
    d = require_dir("fashion_mnist", expand(options.path), "the Fashion-MNIST idx files")
    found = [find_idx("fashion_mnist", d, stem) for stem in FASHION_MNIST_FILES.values()]
    data = _load_fashion_mnist(str(d.resolve()), signature(found))
    return FiniteImageStream(seed, data, options, "fashion_mnist")
