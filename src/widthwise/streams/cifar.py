"""CIFAR-10 python batches, read without running their pickles (``cifar10`` stream).

The CIFAR-10 "python version" is six pickles (``data_batch_1`` … ``data_batch_5``,
``test_batch``), each a dict with ``data`` (10000, 3072) uint8 — 1024 red, 1024
green, 1024 blue values per image, row-major — and ``labels`` (a list of ints).
A pickle can run any code while loading, so they are read with
:class:`CifarUnpickler`, which resolves only the globals such dicts need (numpy's
array reconstructor, ``ndarray``, ``dtype``, and ``_codecs.encode``, which
protocol-2 pickles written by Python 3 use for bytes) and refuses everything
else before anything runs.
"""

from __future__ import annotations

import codecs
import functools
import pickle
from pathlib import Path
from typing import Any

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

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_DIRNAME = "cifar-10-batches-py"


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allowlist."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, bytes, ints and numpy arrays, nothing else."""

    ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_restricted_pickle(stream: str, path: Path, expected: str) -> Any:
    """Unpickle ``path`` with :class:`CifarUnpickler` (Python 2 strings as bytes)."""
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, encoding="bytes").load()
    except RefusedGlobal as err:
        raise UserError(
            f"{stream}: {path} is not {expected}: its pickle asks for {err.qualname}, which "
            "such files never contain (refused before running anything)"
        ) from None
    except OSError as err:
        raise UserError(f"{stream}: cannot read {path} ({err.strerror or err})") from None
    except Exception as err:  # truncated or garbage pickles raise many kinds of errors
        raise UserError(
            f"{stream}: {path} is not {expected} ({type(err).__name__}: {err})"
        ) from None


def _field(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def read_cifar_batch(stream: str, path: Path, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,) int64) of one CIFAR-10 python batch."""
    expected = "a CIFAR-10 python batch (a dict with data (n, 3072) uint8 and labels)"
    batch = load_restricted_pickle(stream, path, expected)
    data = _field(batch, "data") if isinstance(batch, dict) else None
    labels = _field(batch, "labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or labels is None:
        raise UserError(f"{stream}: {path} is not {expected}: no data array or no labels")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(
            f"{stream}: {path} has data of shape {data.shape} and dtype {data.dtype}; "
            "expected (n, 3072) uint8"
        )
    try:
        y = np.asarray(labels)
    except Exception:
        y = np.asarray([], dtype=object)
    y = check_labels(stream, path, y, classes)
    if len(y) != len(data):
        raise UserError(
            f"{stream}: {path} has {len(y)} labels for {len(data)} images; expected one each"
        )
    return data.reshape(-1, 3, 32, 32), y


def cifar10_dir(path: Path) -> Path:
    """``path`` or its ``cifar-10-batches-py`` subdirectory, whichever holds the batches."""
    d = require_dir("cifar10", path, "the CIFAR-10 python batches (cifar-10-batches-py)")
    if not (d / CIFAR10_TEST).exists() and (d / CIFAR10_DIRNAME).is_dir():
        d = d / CIFAR10_DIRNAME
    for name in (*CIFAR10_TRAIN, CIFAR10_TEST):
        if not (d / name).is_file():
            raise UserError(
                f"cifar10: no {name} in {d} (expected the CIFAR-10 python batches "
                f"{', '.join(CIFAR10_TRAIN)}, {CIFAR10_TEST})"
            )
    return d


@functools.lru_cache(maxsize=2)
def _load_cifar10(directory: str, _signature: str) -> ImageData:
    d = Path(directory)
    train = [read_cifar_batch("cifar10", d / name) for name in CIFAR10_TRAIN]
    tx, ty = read_cifar_batch("cifar10", d / CIFAR10_TEST)
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    return ImageData(Split(ArrayRows(x), y), Split(ArrayRows(tx), ty), 10, str(d))


class Cifar10Options(ImageOptions):
    """Options of the ``cifar10`` stream."""

    path: str = Field(description="directory with data_batch_1..5 and test_batch")


@STREAMS.register("cifar10", options=Cifar10Options, loss="cross_entropy")
def build_cifar10(seed: int, options: Cifar10Options) -> Stream:
    """CIFAR-10 from the python batches: (3, 32, 32) images, 10 classes (cross-entropy)."""
    d = cifar10_dir(expand(options.path))
    names = [d / n for n in (*CIFAR10_TRAIN, CIFAR10_TEST)]
    data = _load_cifar10(str(d.resolve()), signature(names))
    return FiniteImageStream(seed, data, options, "cifar10")
