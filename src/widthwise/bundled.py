"""The bundled example studies as ``widthwise list`` shows them, without importing torch.

For each example: its one-line description, what it costs (FLOPs, memory of the widest
width, and — once this machine is calibrated — the estimated time; from
``examples/costs.json``, see :mod:`widthwise.cost`) and the data files it needs, with
whether they are here and how to get them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from widthwise.cost import COSTS_FILE, WidthCost, spec_file_hash

EXAMPLES_DIR = Path(__file__).parent / "examples"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` puts the files (the stream's default path;
``widthwise.streams.idx.FASHION_MNIST_DIR`` is the same, checked by a test)."""


def bundled_spec_paths() -> dict[str, Path]:
    """Bundled example specs by name (the same as :func:`widthwise.spec.bundled_specs`)."""
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


@dataclass(frozen=True)
class DataFiles:
    """Data files a stream reads: what they are, where, whether they are here, how to get
    them."""

    stream: str
    what: str
    path: str | None
    """Where the spec reads them (its ``data.options.path``, or the stream's default)."""
    present: bool | None
    """Whether ``path`` exists (None: no path to check)."""
    how: str

    def describe(self) -> str:
        where = f" at {self.path}" if self.path else ""
        state = {True: "found", False: "missing", None: "not set"}[self.present]
        return f"needs {self.what}{where} ({state}): {self.how}"


FILE_STREAMS: dict[str, tuple[str, str | None, str]] = {
    "fashion_mnist": (
        "Fashion-MNIST (4 idx files)",
        FASHION_MNIST_DIR,
        "apt-get install dataset-fashion-mnist, or set data.options.path to a directory "
        "with the idx files",
    ),
    "cifar10": (
        "CIFAR-10 (cifar-10-batches-py/)",
        None,
        "set data.options.path to the python version's directory",
    ),
    "cifar5m": (
        "CIFAR-5m (cifar5m_part*.npz)",
        None,
        "set data.options.path to the directory of the parts",
    ),
    "image_folder": ("an image folder (root/<class>/<image>)", None, "set data.options.path"),
    "wikitext": (
        "Wikitext-103 (wiki.*.raw or *.parquet)",
        None,
        "set data.options.path to the directory",
    ),
}
"""Streams that read local files (docs/streams.md): what, default path, how to get them."""


def data_files(raw: dict[str, Any]) -> DataFiles | None:
    """The data files a raw spec mapping's stream needs; None for a procedural stream."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    stream = str(data.get("stream", ""))
    if stream not in FILE_STREAMS:
        return None
    what, default, how = FILE_STREAMS[stream]
    options = data.get("options") if isinstance(data.get("options"), dict) else {}
    path = options.get("path", default)
    path = str(path) if isinstance(path, str | os.PathLike) else default
    present = Path(path).expanduser().exists() if path else None
    return DataFiles(stream, what, path, present, how)


def read_costs() -> dict[str, list[WidthCost]]:
    """The counted costs of the bundled examples whose spec file is unchanged since
    ``examples/costs.json`` was written, by name."""
    import json

    try:
        raw = json.loads(COSTS_FILE.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, list[WidthCost]] = {}
    for name, path in bundled_spec_paths().items():
        entry = raw.get(name) if isinstance(raw, dict) else None
        if not isinstance(entry, dict) or entry.get("spec_sha256") != spec_file_hash(path):
            continue
        try:
            out[name] = [WidthCost.from_json(w) for w in entry["widths"]]
        except (KeyError, TypeError):
            continue
    return out


def threads_of(raw: dict[str, Any]) -> int | None:
    """The torch threads per run a raw spec asks for (None: the process's default)."""
    executor = raw.get("executor") if isinstance(raw.get("executor"), dict) else {}
    options = executor.get("options") if isinstance(executor.get("options"), dict) else {}
    threads = options.get("threads_per_run")
    return threads if isinstance(threads, int) and threads > 0 else None


def workers_of(raw: dict[str, Any]) -> int:
    """Widths a raw spec runs at once (its executor's ``workers``; 1 for local)."""
    executor = raw.get("executor") if isinstance(raw.get("executor"), dict) else {}
    options = executor.get("options") if isinstance(executor.get("options"), dict) else {}
    workers = options.get("workers")
    name = executor.get("name", "local")
    return workers if name != "local" and isinstance(workers, int) and workers > 0 else 1


def read_raw(path: Path) -> dict[str, Any]:
    """A bundled spec file as a plain mapping (``{}`` if it is not one)."""
    raw = yaml.safe_load(path.read_text()) or {}
    return raw if isinstance(raw, dict) else {}
