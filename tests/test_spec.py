"""Spec validation through the CLI: every user error is exit 2, one stderr line naming the key.

Nothing may be written for a spec that does not validate (the study dir must not exist).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_spec_dict, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from widthwise.cli import main
from widthwise.errors import SpecError
from widthwise.executors import EXECUTORS
from widthwise.spec import (
    DataSpec,
    OptimizerSpec,
    ParameterizationSpec,
    StudySpec,
    load_spec,
    validate_spec,
)
from widthwise.trackers import TRACKERS

pytestmark = pytest.mark.quick


def set_key(path: str, value: Any) -> Callable[[dict], dict]:
    def mutate(spec: dict) -> dict:
        node = spec
        *parents, leaf = path.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
        return spec

    return mutate


def del_key(path: str) -> Callable[[dict], dict]:
    def mutate(spec: dict) -> dict:
        node = spec
        *parents, leaf = path.split(".")
        for k in parents:
            node = node[k]
        del node[leaf]
        return spec

    return mutate


def merge(**updates: Any) -> Callable[[dict], dict]:
    def mutate(spec: dict) -> dict:
        spec.update(updates)
        return spec

    return mutate


# (id, mutation of the valid tiny spec, strings the error line must contain)
BAD_SPECS: list[tuple[str, Callable[[dict], Any], list[str]]] = [
    ("unknown_top_key", set_key("colour", "red"), ["colour", "unknown key", "allowed: name,"]),
    (
        "unknown_nested_key",
        set_key("optimizer.momentun", 0.9),
        ["optimizer.momentun", "allowed: name, lr, momentum, nesterov"],
    ),
    (
        "unknown_family_option",
        set_key("model.options.depht", 3),
        ["model.options.depht", "unknown key", "allowed: depth"],
    ),
    (
        "unknown_probe_option",
        set_key("probes.train_loss.evry", 3),
        ["probes.train_loss.evry", "unknown key", "allowed: every"],
    ),
    ("negative_width", set_key("widths", [-16, 32]), ["widths", "positive", "-16"]),
    ("zero_width", set_key("widths", [0, 32]), ["widths", "positive"]),
    ("unsorted_widths", set_key("widths", [32, 16]), ["widths", "increasing", "[32, 16]"]),
    ("duplicate_widths", set_key("widths", [16, 16, 32]), ["widths", "duplicates"]),
    ("empty_widths", set_key("widths", []), ["widths"]),
    ("lr_zero", set_key("optimizer.lr", 0), ["optimizer.lr", "greater than 0"]),
    ("lr_negative", set_key("optimizer.lr", -0.1), ["optimizer.lr", "-0.1"]),
    ("unknown_family", set_key("model.family", "mlpp"), ["model.family", "'mlpp'", "mlp"]),
    (
        "unknown_stream",
        set_key("data.stream", "imagenet"),
        ["data.stream", "'imagenet'", "gegenbauer", "teacher"],
    ),
    (
        "unknown_parameterization",
        set_key("parameterization.name", "xyz"),
        ["parameterization.name", "'xyz'", "mup", "sp", "ntp", "mf"],
    ),
    (
        "unknown_parameterization_short_form",
        set_key("parameterization", "mupp"),
        ["parameterization.name", "'mupp'"],
    ),
    ("mf_without_gamma0", set_key("parameterization", {"name": "mf"}), ["gamma0", "mf"]),
    ("gamma0_without_mf", set_key("parameterization.gamma0", 1.0), ["parameterization.gamma0"]),
    ("gamma0_negative", set_key("parameterization", {"name": "mf", "gamma0": -1}), ["gamma0"]),
    (
        "probe_step_beyond_steps",
        set_key("probes.test", {"steps": [5, 25]}),
        ["probes.test.steps", "25", "20"],
    ),
    ("probe_unknown", set_key("probes.hessian_typo", {"every": 1}), ["probes.hessian_typo"]),
    ("probe_option_unknown", set_key("probes.test", {"evry": 5}), ["probes.test.evry"]),
    ("probe_every_zero", set_key("probes.test", {"every": 0}), ["probes.test.every"]),
    ("probe_empty_schedule", set_key("probes.test", {}), ["probes.test"]),
    ("family_option_depth_0", set_key("model.options.depth", 0), ["model.options.depth", "0"]),
    ("family_option_unknown", set_key("model.options.widht", 3), ["model.options.widht"]),
    ("family_option_activation", set_key("model.options.activation", "swish"), ["activation"]),
    ("stream_option_dim", set_key("data.options.dim", 1), ["data.options.dim"]),
    ("stream_option_unknown", set_key("data.options.degre", 2), ["data.options.degre"]),
    ("missing_steps", del_key("steps"), ["steps", "missing"]),
    ("missing_optimizer", del_key("optimizer"), ["optimizer", "missing"]),
    ("missing_lr", del_key("optimizer.lr"), ["optimizer.lr", "missing"]),
    ("steps_not_int", set_key("steps", "many"), ["steps", "'many'"]),
    ("steps_zero", set_key("steps", 0), ["steps"]),
    ("batch_size_negative", set_key("batch_size", -4), ["batch_size"]),
    ("seeds_zero", set_key("seeds", 0), ["seeds"]),
    ("seeds_duplicate_list", set_key("seeds", [1, 1]), ["seeds"]),
    (
        "adam_with_mf",
        merge(
            parameterization={"name": "mf", "gamma0": 1.0}, optimizer={"name": "adam", "lr": 1e-3}
        ),
        ["optimizer.name", "adam", "mf"],
    ),
    ("unknown_optimizer", set_key("optimizer.name", "rmsprop"), ["optimizer.name", "rmsprop"]),
    ("momentum_one", set_key("optimizer.momentum", 1.0), ["optimizer.momentum"]),
    (
        "nesterov_without_momentum",
        set_key("optimizer", {"name": "sgd", "lr": 0.1, "nesterov": True}),
        ["optimizer.nesterov"],
    ),
    ("unknown_lr_schedule", set_key("schedule", {"name": "warp"}), ["schedule.name", "warp"]),
    (
        "warmup_beyond_steps",
        set_key("schedule", {"name": "warmup_cosine", "warmup_steps": 30}),
        ["schedule.warmup_steps", "30"],
    ),
    ("unknown_device", set_key("device", "tpu"), ["device", "'tpu'"]),
    ("unknown_dtype", set_key("dtype", "float16"), ["dtype", "float16"]),
    ("cross_entropy_on_regression", set_key("loss", "cross_entropy"), ["loss", "mse"]),
    ("base_width_too_wide", set_key("base_width", 64), ["base_width", "64"]),
    ("bad_name", set_key("name", "a b"), ["name", "'a b'"]),
    ("model_is_a_list", set_key("model", ["mlp"]), ["model"]),
    ("probes_is_null", set_key("probes", None), ["probes"]),
    ("yaml_is_a_list", lambda spec: [spec], ["list", "mapping"]),
    ("yaml_is_a_scalar", lambda spec: "just a string", ["str", "mapping"]),
]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err.splitlines()


def assert_one_line_error(code: int, lines: list[str], *needles: str) -> str:
    assert code == 2, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def test_tiny_spec_is_valid(tiny_spec: Callable[..., Path]) -> None:
    """The base of every mutation below validates (else the bad-spec tests prove nothing)."""
    spec = load_spec(tiny_spec())
    assert spec.widths == [16, 32]
    assert spec.seed_list == [0, 1]
    assert spec.steps == 20
    assert spec.checkpoint_every == 5


@pytest.mark.parametrize(
    ("mutate", "needles"), [(m, n) for _, m, n in BAD_SPECS], ids=[i for i, _, _ in BAD_SPECS]
)
def test_bad_spec_exit_2_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[dict], Any],
    needles: list[str],
) -> None:
    out = tmp_path / "study"
    path = write_spec(tmp_path / "bad.yaml", mutate(tiny_spec_dict(out)))
    code, lines = run_cli(["run", str(path), "--quiet"], capsys)
    assert_one_line_error(code, lines, str(path), *needles)
    assert not out.exists()
    with pytest.raises(SpecError):
        load_spec(path)


def test_bad_spec_reports_all_problems_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    spec = tiny_spec_dict(out, widths=[32, 16], steps=-1)
    spec["optimizer"]["lr"] = 0
    path = write_spec(tmp_path / "bad.yaml", spec)
    code, lines = run_cli(["run", str(path)], capsys)
    assert_one_line_error(code, lines, "widths", "steps", "optimizer.lr")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("name: x\nwidths: [16, 32\n", ["not valid YAML", "line"]),
        ("name: x\n  widths: 1\n", ["not valid YAML", "line 2"]),
        ("name:\tx\n\tsteps: 3\n", ["not valid YAML"]),
        ("", ["mapping", "NoneType"]),
        ("- 1\n- 2\n", ["mapping", "list"]),
    ],
    ids=["unclosed_list", "bad_indent", "tabs", "empty_file", "yaml_list"],
)
def test_bad_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, lines = run_cli(["run", str(path)], capsys)
    assert_one_line_error(code, lines, str(path), *needles)


def test_undecodable_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00name: x")
    code, lines = run_cli(["run", str(path)], capsys)
    assert_one_line_error(code, lines, str(path), "cannot read")


def test_nonexistent_spec_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, lines = run_cli(["run", "no_such_study"], capsys)
    assert_one_line_error(code, lines, "spec", "'no_such_study'", "quickstart")
    assert list(tmp_path.iterdir()) == []  # not even runs/


def test_coord_check_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path / "bad.yaml", tiny_spec_dict(tmp_path / "study", widths=[32, 16]))
    code, lines = run_cli(["coord-check", str(path)], capsys)
    assert_one_line_error(code, lines, "widths")


# -- unwritable output directory ----------------------------------------------


def test_out_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Works as root too: no permission bit is involved."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    spec = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(blocker / "study"))
    code, lines = run_cli(["run", str(spec), "--quiet"], capsys)
    assert_one_line_error(code, lines, "out", str(blocker), "not a directory")
    assert blocker.read_text() == "not a directory\n"
    # --out on the command line is checked the same way
    code, lines = run_cli(["run", str(spec), "--quiet", "--out", str(blocker)], capsys)
    assert_one_line_error(code, lines, "out", str(blocker))
    assert blocker.read_text() == "not a directory\n"


def test_out_in_read_only_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only parent is refused before anything is written.

    Root ignores permission bits, so there the kernel's answer is emulated: ``os.access``
    reports the read-only dir as unwritable (the check the store does first).
    """
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.geteuid() == 0:
            real_access = os.access

            def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
                if Path(path) == parent and mode & os.W_OK:
                    return False
                return real_access(path, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", access)
        spec = write_spec(tmp_path / "tiny.yaml", tiny_spec_dict(parent / "deeper" / "study"))
        code, lines = run_cli(["run", str(spec), "--quiet"], capsys)
        assert_one_line_error(code, lines, "out", str(parent), "permission denied")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


# -- property: malformed specs never crash -------------------------------------


def _not_a_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return bool(s.strip())
    return False


WORD = st.text(min_size=1, max_size=8).filter(_not_a_number)
NONPOS_INT = st.integers(max_value=0)
JUNK = st.one_of(
    st.none(),
    WORD,
    st.lists(WORD, max_size=2),
    st.dictionaries(WORD, st.integers(), max_size=2),
)
JUNK_NOT_NONE = st.one_of(WORD, st.lists(st.integers(), min_size=1, max_size=2))


def _positive_int_field() -> st.SearchStrategy[Any]:
    return st.one_of(NONPOS_INT, WORD, st.floats(0.1, 9.9).filter(lambda f: f != int(f)), JUNK)


# key path -> values that make the spec invalid there
INVALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(st.integers(), st.just(""), st.just("a b"), st.just("-x"), st.none()),
    "widths": st.one_of(
        st.just([]),
        st.lists(st.integers(max_value=0), min_size=1, max_size=3),
        st.lists(st.integers(1, 64), min_size=2, max_size=4).filter(lambda w: w != sorted(set(w))),
        JUNK,
    ),
    "seeds": st.one_of(
        NONPOS_INT, st.just([]), st.lists(st.integers(max_value=-1), min_size=1, max_size=2), JUNK
    ),
    "steps": _positive_int_field(),
    "batch_size": _positive_int_field(),
    "checkpoint_every": st.one_of(NONPOS_INT, JUNK_NOT_NONE),
    "base_width": st.one_of(NONPOS_INT, st.integers(33, 10**6), JUNK_NOT_NONE),
    "model": st.one_of(st.none(), WORD, st.lists(st.integers(), max_size=2)),
    "model.family": st.one_of(WORD.filter(lambda s: s != "mlp"), st.none(), st.integers()),
    "model.options.depth": st.one_of(st.integers(max_value=1), WORD, st.none()),
    "model.options.activation": st.one_of(
        WORD.filter(lambda s: s not in ("relu", "tanh", "gelu")), st.integers(), st.none()
    ),
    "optimizer": st.one_of(st.none(), WORD, st.just({})),
    "optimizer.name": st.one_of(
        WORD.filter(lambda s: s not in ("sgd", "adam", "adamw")), st.integers(), st.none()
    ),
    "optimizer.lr": st.one_of(st.floats(max_value=0.0), WORD, st.none(), st.just([0.1])),
    "optimizer.momentum": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-3), WORD),
    "optimizer.weight_decay": st.one_of(st.floats(max_value=-1e-6), WORD),
    "parameterization": st.one_of(
        WORD.filter(lambda s: s not in ("sp", "ntp", "mup", "umup")),
        st.just({"name": "mf"}),
        st.builds(lambda g: {"name": "mup", "gamma0": g}, st.floats(0.1, 10)),
    ),
    "parameterization.name": st.one_of(
        WORD.filter(lambda s: s not in ("sp", "ntp", "mup", "mf", "umup")),
        st.integers(),
        st.none(),
    ),
    "parameterization.sigma": st.one_of(st.floats(max_value=0.0), WORD),
    "schedule": st.one_of(
        st.builds(
            lambda s: {"name": s},
            WORD.filter(lambda s: s not in ("constant", "cosine", "warmup_cosine")),
        ),
        st.builds(lambda w: {"name": "warmup_cosine", "warmup_steps": w}, st.integers(20, 99)),
    ),
    "data": st.one_of(st.none(), WORD, st.lists(st.integers(), max_size=2)),
    "data.stream": st.one_of(
        WORD.filter(lambda s: s not in ("gegenbauer", "teacher")), st.integers(), st.none()
    ),
    "data.probe_points": _positive_int_field(),
    "data.seed": st.one_of(st.integers(max_value=-1), WORD),
    "data.options.dim": st.one_of(st.integers(max_value=2), WORD),
    "data.options.degree": st.one_of(st.integers(max_value=0), WORD),
    "probes": st.one_of(st.none(), WORD, st.lists(st.integers(), max_size=2)),
    "probes.test": st.one_of(
        st.just({}),
        st.builds(lambda k: {"every": k}, NONPOS_INT),
        st.builds(lambda s: {"steps": [s]}, st.integers(21, 1000)),
        st.builds(lambda s: {"steps": [s]}, st.integers(max_value=-1)),
        st.none(),
        WORD,
    ),
    "probes.train_loss.every": st.one_of(NONPOS_INT, WORD),
    "device": st.one_of(
        WORD.filter(lambda s: s not in ("auto", "cpu", "cuda") and not s.startswith("cuda:")),
        st.integers(),
    ),
    "dtype": st.one_of(WORD.filter(lambda s: s not in ("float32", "float64")), st.none()),
    "loss": st.one_of(WORD.filter(lambda s: s != "mse"), st.just("cross_entropy"), st.integers()),
    "mixed_precision": st.one_of(
        WORD.filter(lambda s: s not in ("none", "bf16")), st.integers(), st.none(), st.booleans()
    ),
    "deterministic": st.one_of(
        WORD.filter(lambda s: s.strip().lower() not in LAX_BOOL_WORDS),
        st.integers().filter(lambda i: i not in (0, 1)),
        st.floats().filter(lambda f: f not in (0.0, 1.0)),
        st.none(),
        st.lists(st.booleans(), min_size=1, max_size=2),
    ),
    "executor": st.one_of(
        WORD.filter(lambda s: s not in EXECUTORS), st.integers(), st.lists(WORD, max_size=2)
    ),
    "executor.name": st.one_of(WORD.filter(lambda s: s not in EXECUTORS), st.integers(), st.none()),
    "executor.options": st.one_of(WORD, st.integers(), st.lists(st.integers(), max_size=2)),
    "trackers": st.one_of(WORD, st.integers(), st.lists(WORD, min_size=1, max_size=2), st.just([])),
}

# strings pydantic's lax mode reads as booleans (not errors for ``deterministic``)
LAX_BOOL_WORDS = {"0", "1", "f", "n", "t", "y", "no", "off", "on", "yes", "true", "false"}

# mapping path -> keys it knows (an unknown key there is an error)
KNOWN_KEYS: dict[str, set[str]] = {
    "": set(StudySpec.model_fields),
    "model": {"family", "options"},
    "model.options": {"depth", "activation", "bias"},
    "optimizer": set(OptimizerSpec.model_fields),
    "parameterization": set(ParameterizationSpec.model_fields),
    "data": set(DataSpec.model_fields),
    "data.options": {"dim", "degree", "noise"},
    "probes": {"train_loss", "test"},
    "probes.test": {"every", "steps", "log_spaced", "at", "logits"},
    "executor": {"name", "options"},
    "trackers": set(TRACKERS.names()),
}

IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,9}", fullmatch=True)

MUTATION = st.one_of(
    st.sampled_from(sorted(INVALID_VALUES)).flatmap(
        lambda k: st.tuples(st.just("set"), st.just(k), INVALID_VALUES[k])
    ),
    st.sampled_from(sorted(KNOWN_KEYS)).flatmap(
        lambda where: st.tuples(
            st.just("add"),
            IDENT.filter(lambda k: k not in KNOWN_KEYS[where]).map(
                lambda k: f"{where}.{k}" if where else k
            ),
            st.one_of(st.integers(), WORD, st.none()),
        )
    ),
)


def _apply(spec: dict, path: str, value: Any) -> bool:
    """Set ``path`` to ``value`` if its parent is still a mapping; False if it no longer is."""
    node: Any = spec
    *parents, leaf = path.split(".")
    for k in parents:
        if not isinstance(node, dict):
            return False
        node = node.setdefault(k, {})
    if not isinstance(node, dict):
        return False
    node[leaf] = value
    return True


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3, unique_by=lambda m: m[1]))
def test_malformed_specs_exit_2_one_line(
    mutations: list[tuple[str, str, Any]], monkeypatch_run: Callable[[], list[Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        spec = tiny_spec_dict(out)
        applied = [path for _, path, value in mutations if _apply(spec, path, value)]
        assert applied
        path = Path(tmp) / "bad.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", str(path), "--quiet"])
        lines = err.getvalue().splitlines()
        assert monkeypatch_run() == [], f"a mutated spec validated: {spec}"
        assert code == 2, lines
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: ")
        # the line names (at least) one broken key, or the mapping holding it
        names = {".".join(p.split(".")[:i]) for p in applied for i in range(1, p.count(".") + 2)}
        assert any(f" {n}:" in lines[0] or f" {n}." in lines[0] for n in names), (
            applied,
            lines[0],
        )
        assert not out.exists()


@pytest.fixture(scope="module")
def monkeypatch_run() -> Any:
    """Replace ``widthwise.study.run`` by a recorder: a spec that validates must not train here."""
    import widthwise.study

    calls: list[Any] = []
    real = widthwise.study.run

    def fake_run(spec: Any, **kwargs: Any) -> Path:
        calls.append(spec)
        raise AssertionError("a malformed spec reached training")

    widthwise.study.run = fake_run  # type: ignore[assignment]

    def drain() -> list[Any]:
        got = list(calls)
        calls.clear()
        return got

    yield drain
    widthwise.study.run = real  # type: ignore[assignment]


def test_hash_of_a_study_made_before_the_newer_keys_is_unchanged() -> None:
    """Studies written by widthwise before mixed_precision/deterministic/executor/trackers
    existed must still resume: their spec hash (pinned here) may not move."""
    spec = validate_spec(tiny_spec_dict("/tmp/anywhere"))
    assert spec.hash() == "ab8f1f43e6ef78f5"
    assert validate_spec(tiny_spec_dict("/elsewhere", executor="processes")).hash() == spec.hash()
    assert validate_spec(tiny_spec_dict(mixed_precision="bf16")).hash() != spec.hash()
    assert validate_spec(tiny_spec_dict(deterministic=True)).hash() != spec.hash()


# -- parameterization options and stream losses (issue 11, items 2 and 7) -------------

# hashes of the tiny spec in each legacy parameterization form, computed before options
# became the parameterization's own: existing studies must still resume
LEGACY_PARAMETERIZATIONS: list[tuple[Any, str]] = [
    ("mup", "ab8f1f43e6ef78f5"),
    ({"name": "mf", "gamma0": 1.0, "center": True}, "ab7e782abf1a536c"),
    ({"name": "mup", "readout_zero_init": True}, "582391b5afdefe49"),
    ({"name": "sp", "sigma": 2.0}, "cfbe68c3974d5d05"),
]


@pytest.mark.parametrize(("param", "pinned"), LEGACY_PARAMETERIZATIONS)
def test_legacy_parameterization_forms_keep_their_hash(param: Any, pinned: str) -> None:
    spec = validate_spec(tiny_spec_dict(parameterization=param))
    dump = spec.parameterization.model_dump()
    assert set(dump) == {
        "name",
        "sigma",
        "gamma0",
        "center",
        "readout_zero_init",
        "query_zero_init",
        "output_multiplier",  # newer: hashed only away from its default 1
    }
    assert spec.hash() == pinned
    alpha = {"name": param, "output_multiplier": 2.0} if isinstance(param, str) else None
    if alpha is not None:
        assert validate_spec(tiny_spec_dict(parameterization=alpha)).hash() != pinned
    # the same spec read back from its dump (as a study directory stores it)
    assert validate_spec(spec.model_dump(mode="json")).hash() == spec.hash()


def test_mf_options_reach_the_rules() -> None:
    spec = validate_spec(tiny_spec_dict(parameterization={"name": "mf", "gamma0": 0.5}))
    opts = spec.parameterization.options()
    assert (opts.gamma0, opts.center) == (0.5, False)
    assert validate_spec(tiny_spec_dict()).parameterization.options().readout_zero_init is False


def test_parameterization_problems_are_all_reported(capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_spec_dict(
        parameterization={"name": "sp", "center": True, "readout_zero_init": True},
        loss="cross_entropy",
    )
    raw["probes"]["test"] = {"evry": 3}
    with pytest.raises(SpecError) as err:
        validate_spec(raw)
    line = str(err.value)
    for needle in (
        "parameterization.center: 'sp' takes no options",
        "parameterization.readout_zero_init: 'sp' takes no options",
        "loss: stream 'gegenbauer' has real-valued targets",
        "probes.test.evry",
    ):
        assert needle in line, (needle, line)
    assert "\n" not in line


def test_validation_builds_no_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss is checked against the stream's declared loss: no stream is built, no
    data read, and a stream that would fail to load hides no other problem."""
    import dataclasses

    from widthwise.streams import STREAMS

    def boom(*args: Any) -> Any:
        raise AssertionError("validation built the stream")

    for name in ("gegenbauer", "text"):
        entry = STREAMS.entry(name)
        monkeypatch.setitem(STREAMS._entries, name, dataclasses.replace(entry, obj=boom))
    assert validate_spec(tiny_spec_dict(loss="mse")).loss == "mse"
    with pytest.raises(SpecError, match="loss: stream 'gegenbauer'"):
        validate_spec(tiny_spec_dict(loss="cross_entropy"))
    text = tiny_spec_dict(loss="cross_entropy", data={"stream": "text", "options": {}})
    assert validate_spec(text).loss == "cross_entropy"


def test_declared_loss_is_the_built_streams_loss() -> None:
    from widthwise.streams import STREAMS, declared_loss

    for name in ("gegenbauer", "teacher", "teacher_images", "mnist1d"):
        options = STREAMS.validate_options(name, {})
        assert declared_loss(name, options) == STREAMS.get(name)(0, options).loss, name
    for name in STREAMS.names():  # every built-in declares one (tests' plug-ins may not)
        entry = STREAMS.entry(name)
        if not entry.obj.__module__.startswith("widthwise."):
            continue
        loss = entry.traits.get("loss")
        assert loss in ("mse", "cross_entropy") or callable(loss), name


def test_a_stream_loss_may_depend_on_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream declares ``loss=`` as a function of its validated options."""
    from pydantic import BaseModel, ConfigDict

    from widthwise.registry import Entry
    from widthwise.streams import STREAMS

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        regression: bool = False

    def loss(options: Options) -> str:
        return "mse" if options.regression else "cross_entropy"

    entry = Entry("either", lambda seed, o: None, Options, "", {"loss": loss})
    monkeypatch.setitem(STREAMS._entries, "either", entry)
    data = {"stream": "either", "options": {"regression": False}}
    assert validate_spec(tiny_spec_dict(loss="cross_entropy", data=data)).loss == "cross_entropy"
    data = {"stream": "either", "options": {"regression": True}}
    with pytest.raises(SpecError, match="loss: stream 'either' has real-valued targets"):
        validate_spec(tiny_spec_dict(loss="cross_entropy", data=data))


def test_a_stream_without_a_declared_loss_is_checked_when_built() -> None:
    """Plug-ins that declare no loss are checked by the trainer (one line naming loss)."""
    from widthwise.errors import UserError
    from widthwise.streams import STREAMS, training_loss

    stream = STREAMS.get("gegenbauer")(0, STREAMS.validate_options("gegenbauer", {}))
    assert training_loss(None, stream) == "mse"
    assert training_loss("mse", stream) == "mse"
    with pytest.raises(UserError, match="^loss: "):
        training_loss("cross_entropy", stream)
