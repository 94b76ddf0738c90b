"""Shared fixtures: a tiny valid study spec (seconds to run on a 2-core CPU)."""

from __future__ import annotations

import copy
import sys
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


QUICK_ELSEWHERE = {
    "test_store.py": (
        "test_open_study_dims_and_coords",
        "test_open_study_values_are_consistent",
        "test_open_study_attrs",
        "test_manifest_and_stored_spec",
        "test_torn_last_scalar_line_is_skipped",
        "test_open_study_refuses_non_study",
        "test_different_spec_same_dir_refused",
    ),
}
"""Tests marked ``quick`` from here rather than in their module (``pytest -m quick``: a
fast subset covering every module's basics; the other modules mark themselves)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = QUICK_ELSEWHERE.get(item.path.name, ())
        if getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.quick)


@pytest.fixture(scope="session", autouse=True)
def user_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user cache (calibration, shown horizons) in a temporary directory for the
    whole session, subprocesses included: tests never read or write ~/.cache."""
    path = tmp_path_factory.mktemp("user_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WIDTHWISE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def no_leftover_ray() -> Iterator[None]:
    """Shut down a Ray instance a test left running (e.g. one that failed before the
    executor's own shutdown), so pytest never hangs at exit on a Ray session."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()
