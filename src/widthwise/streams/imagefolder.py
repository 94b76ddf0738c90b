"""Images in class subdirectories (``image_folder`` stream; Pillow: ``widthwise[images]``).

Layout as torchvision's ``ImageFolder``: ``root/<class>/**/<image>``, classes are the
sorted subdirectory names, images the files with an image extension, sorted. If
``root`` has a ``train`` subdirectory and one of ``val``, ``valid``, ``validation``,
``test``, those are the training and test splits (same class names); otherwise a
fixed random ``holdout`` of the images is the test split (the same for every
data seed). Each image is converted to RGB (``channels: 3``) or grayscale
(``channels: 1``), its shorter side resized to ``size`` (bilinear), then center
cropped to ``size`` × ``size``: the ImageNet recipe of paper A.2.3 at any resolution.

Decoding is the slow part; with ``cache_dir`` set, the decoded arrays are saved
once (keyed by the files' names, sizes and times and by size/channels) and later
runs memory-map them.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from widthwise.errors import UserError
from widthwise.streams._io import (
    atomic_save_npy,
    expand,
    require_dir,
    signature,
    writable_cache_dir,
)
from widthwise.streams.base import STREAMS, Stream
from widthwise.streams.finite import (
    ArrayRows,
    FiniteImageStream,
    ImageData,
    ImageOptions,
    MemmapRows,
    Split,
    split_off_holdout,
)

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
TEST_DIRS = ("val", "valid", "validation", "test")


def require_pillow() -> Any:
    """PIL.Image, or a UserError naming the optional extra."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError(
            "image_folder needs Pillow to read images: pip install 'widthwise[images]'"
        ) from None
    return Image


def list_images(root: Path, training: bool = True) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, class index)]) of a class-per-subdirectory tree.

    A training tree needs two classes at least; a test tree may hold a subset.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(
            f"image_folder: {root} has no class subdirectories (expected root/<class>/<image>)"
        )
    items: list[tuple[Path, int]] = []
    for k, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
        )
        if not files:
            raise UserError(
                f"image_folder: class directory {root / name} has no images "
                f"(expected files ending in {', '.join(sorted(EXTENSIONS))})"
            )
        items.extend((p, k) for p in files)
    if training and len(classes) < 2:
        raise UserError(f"image_folder: {root} has one class ({classes[0]}); expected at least two")
    return classes, items


def load_image(image_module: Any, path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (channels, size, size): shorter side resized, center cropped."""
    try:
        with image_module.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), image_module.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
            a = np.asarray(img, dtype=np.uint8)
    except Exception as err:  # PIL raises many kinds for broken or hostile files
        raise UserError(f"image_folder: {path} is not a readable image ({err})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode(
    items: list[tuple[Path, int]], size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    image_module = require_pillow()
    x = np.empty((len(items), channels, size, size), dtype=np.uint8)
    for i, (p, _) in enumerate(items):
        x[i] = load_image(image_module, p, size, channels)
    return x, np.array([k for _, k in items], dtype=np.int64)


def decoded_split(
    items: list[tuple[Path, int]], size: int, channels: int, cache: Path | None
) -> Split:
    """Decoded images of ``items``, through the cache when there is one."""
    if cache is None:
        x, y = decode(items, size, channels)
        return Split(ArrayRows(x), y)
    h = hashlib.sha256(f"{size}\0{channels}\n".encode())
    for p, k in items:
        st = p.stat()
        h.update(f"{p}\0{k}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    key = h.hexdigest()[:20]
    x_path, y_path = cache / f"image_folder-{key}.x.npy", cache / f"image_folder-{key}.y.npy"
    if not (x_path.exists() and y_path.exists()):
        x, y = decode(items, size, channels)
        atomic_save_npy(x_path, x)
        atomic_save_npy(y_path, y)
    return Split(MemmapRows(x_path), np.load(y_path, allow_pickle=False))


@functools.lru_cache(maxsize=2)
def _load_image_folder(
    root: str, size: int, channels: int, holdout: int | None, cache_dir: str | None, _sig: str
) -> ImageData:
    r = Path(root)
    require_pillow()
    cache = writable_cache_dir("image_folder", Path(cache_dir)) if cache_dir else None
    test_dir = next((r / t for t in TEST_DIRS if (r / t).is_dir()), None)
    if (r / "train").is_dir() and test_dir is not None:
        classes, train_items = list_images(r / "train")
        test_classes, test_items = list_images(test_dir, training=False)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise UserError(
                f"image_folder: {test_dir} has classes {unknown} that {r / 'train'} lacks"
            )
        index = {c: k for k, c in enumerate(classes)}
        test_items = [(p, index[test_classes[k]]) for p, k in test_items]
        train = decoded_split(train_items, size, channels, cache)
        test = decoded_split(test_items, size, channels, cache)
        facts: dict[str, Any] = {"class_names": classes, "split": f"train/{test_dir.name}"}
    else:
        classes, items = list_images(r)
        train, test = split_off_holdout(
            "image_folder", decoded_split(items, size, channels, cache), holdout
        )
        facts = {"class_names": classes, "split": "holdout"}
    return ImageData(train, test, len(classes), root, facts)


class ImageFolderOptions(ImageOptions):
    """Options of the ``image_folder`` stream."""

    path: str = Field(description="root directory: root/<class>/<image> (or root/train, root/val)")
    size: int = Field(
        32, ge=1, le=4096, description="images are resized and center-cropped to size×size"
    )
    channels: Literal[1, 3] = Field(3, description="3: RGB, 1: grayscale")
    holdout: int | None = Field(
        None, gt=0, description="without train/val dirs: held-out images (default min(10000, 10%))"
    )
    cache_dir: str | None = Field(None, description="save the decoded arrays here (optional)")


@STREAMS.register("image_folder", options=ImageFolderOptions, loss="cross_entropy")
def build_image_folder(seed: int, options: ImageFolderOptions) -> Stream:
    """Images in class subdirectories (Pillow): (channels, size, size), one class per dir."""
    root = require_dir("image_folder", expand(options.path), "a directory of class subdirectories")
    cache = str(expand(options.cache_dir).resolve()) if options.cache_dir else None
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)
    data = _load_image_folder(
        str(root.resolve()),
        options.size,
        options.channels,
        options.holdout,
        cache,
        signature(files),
    )
    return FiniteImageStream(seed, data, options, "image_folder")
