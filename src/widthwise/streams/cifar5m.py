"""CIFAR-5m (Nakkiran et al. 2021) from its ``cifar5m_part*.npz`` parts (``cifar5m`` stream).

Each part holds ``X`` (N, 32, 32, 3) uint8 images and ``Y`` (N,) labels; the full
set is about a million images per part. A part is converted once, streaming
(never the whole part in memory), to ``cifar5m_partK.x.npy`` (N, 3, 32, 32) and
``cifar5m_partK.y.npy`` (N,) int64 next to the parts (or in ``cache_dir``), each
written to a temporary file and renamed into place; later runs memory-map them.
A cache older than its part, or of another shape, is rebuilt.

Paper A.2.1: ResNet-18-LN on CIFAR-5m with random crop (padding 4) and horizontal
flip; Section 3.2 trains on 200k / 50k subsets (``train_size``, ``label_noise``).
"""

from __future__ import annotations

import functools
import re
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
from pydantic import Field

from widthwise.errors import UserError
from widthwise.streams._io import (
    atomic_path,
    atomic_save_npy,
    expand,
    require_dir,
    signature,
    writable_cache_dir,
)
from widthwise.streams.base import STREAMS, Stream
from widthwise.streams.finite import (
    ConcatRows,
    FiniteImageStream,
    ImageData,
    ImageOptions,
    MemmapRows,
    Split,
    check_labels,
    split_off_holdout,
)

PART_RE = re.compile(r"^cifar5m_part(\d+)\.npz$")
EXPECTED = "a CIFAR-5m part: an .npz with X (N, 32, 32, 3) uint8 images and Y (N,) labels"
CHUNK_ROWS = 8192


def find_parts(directory: Path) -> dict[int, Path]:
    """Part number -> path of every ``cifar5m_part<k>.npz`` in ``directory``."""
    parts = {}
    for p in directory.iterdir():
        m = PART_RE.match(p.name)
        if m and p.is_file():
            parts[int(m.group(1))] = p
    if not parts:
        raise UserError(
            f"cifar5m: no cifar5m_part*.npz in {directory} (expected the CIFAR-5m parts; "
            "set data.options.path)"
        )
    return dict(sorted(parts.items()))


def _member_header(f: IO[bytes], path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as err:
        raise UserError(
            f"cifar5m: {path} member {name}.npy is unreadable ({err}); expected {EXPECTED}"
        ) from None
    if fortran or dtype.hasobject:
        raise UserError(
            f"cifar5m: {path} member {name}.npy is Fortran-ordered or holds objects; expected {EXPECTED}"
        )
    return tuple(shape), dtype


def _open_member(zf: zipfile.ZipFile, path: Path, name: str) -> IO[bytes]:
    try:
        return zf.open(f"{name}.npy")
    except KeyError:
        raise UserError(f"cifar5m: {path} has no array {name!r}; expected {EXPECTED}") from None


def convert_part(part: Path, cache: Path) -> tuple[Path, Path]:
    """Convert ``part`` to memory-mappable .npy files in ``cache`` (once); returns their paths."""
    x_out = cache / f"{part.stem}.x.npy"
    y_out = cache / f"{part.stem}.y.npy"
    mtime = part.stat().st_mtime_ns
    if (
        x_out.exists()
        and y_out.exists()
        and min(x_out.stat().st_mtime_ns, y_out.stat().st_mtime_ns) >= mtime
    ):
        try:
            x = np.load(x_out, mmap_mode="r", allow_pickle=False)
            y = np.load(y_out, mmap_mode="r", allow_pickle=False)
            if x.ndim == 4 and x.shape[1] == 3 and len(x) == len(y):
                return x_out, y_out
        except (OSError, ValueError):
            pass  # a broken cache is rebuilt
    try:
        zf = zipfile.ZipFile(part)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(
            f"cifar5m: {part} is not a readable .npz archive ({err}); expected {EXPECTED}"
        ) from None
    with zf:
        with _open_member(zf, part, "Y") as f:
            try:
                y = np.lib.format.read_array(f, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise UserError(
                    f"cifar5m: {part} member Y.npy is unreadable ({err}); expected {EXPECTED}"
                ) from None
        y = check_labels(
            "cifar5m", part, y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y, 10
        )
        with _open_member(zf, part, "X") as f:
            shape, dtype = _member_header(f, part, "X")
            if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
                raise UserError(
                    f"cifar5m: {part} has X of shape {shape} and dtype {dtype}; expected {EXPECTED}"
                )
            if shape[0] != len(y):
                raise UserError(
                    f"cifar5m: {part} has {shape[0]} images but {len(y)} labels; expected one each"
                )
            n, h, w, c = shape
            row = h * w * c
            with atomic_path(x_out) as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, c, h, w))
                for start in range(0, n, CHUNK_ROWS):
                    k = min(CHUNK_ROWS, n - start)
                    buf = f.read(k * row)
                    if len(buf) != k * row:
                        raise UserError(
                            f"cifar5m: {part} member X.npy is truncated; expected {EXPECTED}"
                        )
                    chunk = np.frombuffer(buf, dtype=np.uint8).reshape(k, h, w, c)
                    out[start : start + k] = chunk.transpose(0, 3, 1, 2)
                out.flush()
                del out
    atomic_save_npy(y_out, y)
    return x_out, y_out


@functools.lru_cache(maxsize=2)
def _load_cifar5m(
    directory: str, cache_dir: str, test_part: int | None, holdout: int | None, _sig: str
) -> ImageData:
    parts = find_parts(Path(directory))
    cache = writable_cache_dir("cifar5m", Path(cache_dir))
    if test_part is not None and test_part not in parts:
        raise UserError(
            f"cifar5m: test_part {test_part} not found in {directory} (parts: {sorted(parts)})"
        )
    splits: dict[int, Split] = {}
    for k, p in parts.items():
        x_path, y_path = convert_part(p, cache)
        splits[k] = Split(MemmapRows(x_path), np.load(y_path, allow_pickle=False).astype(np.int64))

    def joined(keys: list[int]) -> Split:
        return Split(
            ConcatRows([splits[k].x for k in keys]), np.concatenate([splits[k].y for k in keys])
        )

    if test_part is None and len(parts) >= 2:
        test_part = max(parts)
    facts = {"parts": sorted(parts), "test_part": test_part}
    if test_part is None:
        train, test = split_off_holdout("cifar5m", joined(list(parts)), holdout)
    else:
        train, test = joined([k for k in parts if k != test_part]), splits[test_part]
    return ImageData(train, test, 10, directory, facts)


class Cifar5mOptions(ImageOptions):
    """Options of the ``cifar5m`` stream."""

    path: str = Field(description="directory with the cifar5m_part*.npz parts")
    cache_dir: str | None = Field(
        None, description="where the one-time .npy conversion goes (default: next to the parts)"
    )
    test_part: int | None = Field(
        None, ge=0, description="part held out for testing (default: the highest-numbered)"
    )
    holdout: int | None = Field(
        None, gt=0, description="with a single part: held-out examples (default min(10000, 10%))"
    )


@STREAMS.register("cifar5m", options=Cifar5mOptions, loss="cross_entropy")
def build_cifar5m(seed: int, options: Cifar5mOptions) -> Stream:
    """CIFAR-5m from its npz parts, memory-mapped: (3, 32, 32) images, 10 classes."""
    d = require_dir("cifar5m", expand(options.path), "the cifar5m_part*.npz parts")
    parts = find_parts(d)
    cache = expand(options.cache_dir) if options.cache_dir else d
    data = _load_cifar5m(
        str(d.resolve()),
        str(cache.resolve()),
        options.test_part,
        options.holdout,
        signature(list(parts.values())),
    )
    return FiniteImageStream(seed, data, options, "cifar5m")
