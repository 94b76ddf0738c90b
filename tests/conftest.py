"""Shared fixtures: a tiny valid study spec (seconds to run on a 2-core CPU)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "description": "tiny test study",
    "model": {"family": "mlp", "options": {"depth": 3}},
    "widths": [16, 32],
    "seeds": 2,
    "parameterization": {"name": "mup"},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "steps": 20,
    "batch_size": 16,
    "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 8}, "probe_points": 32},
    "probes": {"train_loss": {"every": 1}, "test": {"every": 5}},
    "checkpoint_every": 5,
    "device": "cpu",
}


def tiny_spec_dict(out: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """A deep copy of the tiny spec, with ``out`` and top-level ``overrides`` applied."""
    spec = copy.deepcopy(TINY_SPEC)
    if out is not None:
        spec["out"] = str(out)
    spec.update(copy.deepcopy(overrides))
    return spec


def write_spec(path: str | Path, spec: Any) -> Path:
    """Dump ``spec`` (any YAML-able object) to ``path``; returns the path."""
    path = Path(path)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_spec(**overrides)`` writes a valid tiny spec YAML under ``tmp_path``.

    ``out`` defaults to ``tmp_path / "study"``; pass ``out=...`` to change it and
    ``name=`` (the file name, default ``tiny.yaml``) via ``filename``.
    """

    def make(filename: str = "tiny.yaml", **overrides: Any) -> Path:
        overrides.setdefault("out", str(tmp_path / "study"))
        out = overrides.pop("out")
        return write_spec(tmp_path / filename, tiny_spec_dict(out, **overrides))

    return make


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch intra-op thread for a module (restored after).

    Tiny models gain nothing from threads, and on a loaded 2-core machine spinning
    OpenMP threads slow each step ~10×. Also makes in-process arithmetic match a
    subprocess started with ``OMP_NUM_THREADS=1``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
