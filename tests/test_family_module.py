"""The module family: roles inferred from shapes, mup equality, vmap vs loop, taps, errors.

Oracle (DESIGN.md style): for the same module, widthwise's ``mup`` trains step for
step like microsoft/mup's ``set_base_shapes`` + ``MuReadout``/``MuSharedReadout`` +
``MuSGD``/``MuAdam`` from the same initial weights (float32 rounding: rtol 1e-5,
atol 1e-6), at m = 3 so that every multiplier and lr scale matters.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import module_factories as mf
import mup
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_spec

from widthwise.cli import main
from widthwise.errors import UserError
from widthwise.families import FAMILIES, build_network, from_module
from widthwise.losses import per_member_loss
from widthwise.parameterization import Role
from widthwise.spec import refuse_code, validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

pytestmark = pytest.mark.usefixtures("single_thread")
BASE, WIDTH, STEPS = 32, 96, 5
RTOL, ATOL = 1e-5, 1e-6


def spec_for(factory: str, data: dict[str, Any], opt: dict[str, Any], **extra: Any):
    options = {"factory": f"module_factories:{factory}", **extra.pop("options", {})}
    raw = {
        "name": "mod",
        "model": {"family": "module", "options": options},
        "widths": [BASE, WIDTH],
        "base_width": BASE,
        "seeds": [0],
        "parameterization": extra.pop("param", "mup"),
        "optimizer": opt,
        "steps": STEPS,
        "batch_size": 16,
        "data": data,
        "device": "cpu",
        "ensemble": extra.pop("ensemble", "vmap"),
        **extra,
    }
    return validate_spec(raw)


def trainer_for(spec, width: int = WIDTH) -> EnsembleTrainer:
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, torch.device("cpu"))


def roles(spec, width: int = BASE) -> dict[str, tuple[Role, int]]:
    return {p.name: (p.role, p.fan_in) for p in trainer_for(spec, width).network.params}


GEG = {"stream": "gegenbauer", "seed": 3, "options": {"dim": 16, "degree": 2}}
TOK = {"stream": "periodic_tokens", "seed": 1, "options": {"seq_len": 8, "vocab": 16}}
IMG = {"stream": "teacher_images", "seed": 0, "options": {"size": 8}}
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}
ADAM = {"name": "adam", "lr": 3e-3, "eps": 1e-6}
ADAMW = {"name": "adamw", "lr": 3e-3, "eps": 1e-6, "weight_decay": 0.1}


@pytest.mark.quick
def test_roles_linear_conv_embedding_tied_and_hf_conv1d() -> None:
    r = roles(spec_for("make_mlp", GEG, SGD, options={"kwargs": {"bias": True}}))
    assert r == {
        "l1.weight": (Role.INPUT, 16),
        "l1.bias": (Role.VECTOR, 1),
        "l2.weight": (Role.HIDDEN, BASE),
        "l2.bias": (Role.VECTOR, 1),
        "out.weight": (Role.OUTPUT, BASE),
        "out.bias": (Role.FIXED, 1),
    }
    r = roles(spec_for("make_cnn", IMG, SGD))
    assert r["c1.weight"] == (Role.INPUT, 3 * 9)  # fan-in in·k·k
    assert r["dw.weight"] == (Role.INPUT, 9)  # depthwise: one width dim (mup: vector-like)
    assert r["c2.weight"] == (Role.HIDDEN, BASE * 9)
    assert r["norm.weight"][0] is Role.VECTOR and r["fc.weight"] == (Role.OUTPUT, 2 * BASE)
    r = roles(spec_for("make_hf_style", GEG, SGD))  # weights stored (in, out)
    assert r["inp.weight"] == (Role.INPUT, 16)
    assert r["mid.weight"] == (Role.HIDDEN, BASE)
    assert r["out.weight"] == (Role.OUTPUT, 3 * BASE)
    tr = trainer_for(spec_for("make_tied", TOK, SGD))
    assert [p.name for p in tr.network.params][0] == "emb.weight"
    assert "head.weight" not in tr.params  # one tensor, bound to both names
    assert tr.network.params[0].role is Role.INPUT and tr.network.params[0].fan_in == 1
    assert tr.network.apply.readout_mult == {"head": pytest.approx(BASE / WIDTH)}


def _mup_model(kind: str, width: int):
    torch.manual_seed(0)
    if kind == "mlp":

        def make(w):
            return mf.MLP(w, 16, 1, True, readout=mup.MuReadout)
    else:

        def make(w):
            return mf.TiedLM(w, 16, shared_readout=mup.MuSharedReadout)

    model = make(width)
    mup.set_base_shapes(model, make(BASE), delta=make(2 * BASE))
    return model


def _mup_optimizer(model, opt):
    if opt["name"] == "sgd":
        return mup.MuSGD(
            model.parameters(),
            lr=opt["lr"],
            momentum=opt["momentum"],
            weight_decay=opt["weight_decay"],
        )
    cls = mup.MuAdam if opt["name"] == "adam" else mup.MuAdamW
    return cls(
        model.parameters(), lr=opt["lr"], eps=opt["eps"], weight_decay=opt.get("weight_decay", 0)
    )


@pytest.mark.quick
@pytest.mark.parametrize("opt", [SGD, ADAM, ADAMW], ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("kind", ["mlp", "tied"])
def test_mup_equals_mup_package_step_by_step(kind: str, opt: dict[str, Any]) -> None:
    spec = (
        spec_for("make_mlp", GEG, opt, options={"kwargs": {"bias": True}})
        if kind == "mlp"
        else spec_for("make_tied", TOK, opt)
    )
    model = _mup_model(kind, WIDTH)
    optim = _mup_optimizer(model, opt)
    tr = trainer_for(spec)
    ref = dict(model.named_parameters())
    assert set(ref) == set(tr.params)
    with torch.no_grad():
        for k, p in tr.params.items():
            p.copy_(ref[k].detach()[None])
    start = {k: v.detach().clone() for k, v in ref.items()}
    gap = 0.0
    for t in range(STEPS):
        x, y = tr.to_tensors(*tr.stream.batch(t, 16))
        ours = tr.train_step()
        optim.zero_grad()
        loss = per_member_loss(tr.loss_name, model(x)[None], y)[0]
        loss.backward()
        optim.step()
        torch.testing.assert_close(ours[0], loss.detach(), rtol=RTOL, atol=ATOL)
        for k, p in ref.items():
            torch.testing.assert_close(tr.params[k].detach()[0], p.detach(), rtol=RTOL, atol=ATOL)
            gap = max(gap, float((tr.params[k].detach()[0] - p.detach()).abs().max()))
    for k, p in ref.items():  # the oracle has teeth
        assert float((p.detach() - start[k]).abs().max()) > 100 * ATOL, k
    print(f"{kind} {opt['name']}: max weight gap {gap:.2e}")


@pytest.mark.quick
def test_vmap_equals_loop_and_taps_feed_probes() -> None:
    out = {}
    for strategy in ("vmap", "loop"):
        spec = spec_for("make_tied", TOK, ADAM, ensemble=strategy, seeds=3)
        tr = trainer_for(spec, BASE)
        assert tr.ensemble.strategy == strategy
        losses = torch.stack([tr.train_step() for _ in range(3)])
        out[strategy] = (losses, {k: v.detach().clone() for k, v in tr.params.items()})
        x = torch.as_tensor(tr.stream.probe_set(4)[0])
        logits, taps = tr.ensemble.forward_taps(tr.params, x)
        assert logits.shape == (3, 4, 8, 16)
        assert taps["act/hidden"].shape == (3, 4, BASE)  # positions averaged
        assert taps["act/head.in"].shape == (3, 4, BASE)  # the readout's input
    torch.testing.assert_close(out["vmap"][0], out["loop"][0], rtol=1e-5, atol=1e-6)
    for k in out["vmap"][1]:
        torch.testing.assert_close(out["vmap"][1][k], out["loop"][1][k], rtol=1e-5, atol=1e-6)


def test_vmap_failure_falls_back_to_the_loop_with_a_notice() -> None:
    spec = spec_for("make_branchy", GEG, SGD, param="sp", seeds=2)
    with pytest.warns(UserWarning, match="vmap cannot run it"):
        tr = trainer_for(spec, BASE)
    assert tr.ensemble.strategy == "loop"
    assert torch.isfinite(tr.train_step()).all()


def test_vmap_silently_wrong_is_caught_and_falls_back() -> None:
    spec = spec_for("make_wrong_under_vmap", GEG, SGD, param="sp", seeds=2)
    with pytest.warns(UserWarning, match="vectorized and per-member results differ"):
        tr = trainer_for(spec, BASE)
    assert tr.ensemble.strategy == "loop"


def test_dims_scaling_by_different_ratios_are_an_error() -> None:
    with pytest.raises(UserError, match=r"'l1.weight' has shape \(1024, 32\) at width 32.*ratios"):
        trainer_for(spec_for("make_squares", GEG, SGD), BASE)


def test_load_member_refuses_a_factory_not_imported(tmp_path: Path) -> None:
    import widthwise

    raw = {
        "name": "lm",
        "model": {"family": "module", "options": {"factory": "module_factories:make_mlp"}},
        "widths": [16],
        "seeds": 1,
        "optimizer": SGD,
        "steps": 2,
        "batch_size": 8,
        "data": GEG,
        "device": "cpu",
        "out": str(tmp_path / "study"),
    }
    out = widthwise.run(validate_spec(raw), trusted_imports=["module_factories"])
    raw["model"]["options"]["factory"] = "not_imported_xyz:make"  # as if the directory said so
    spec_text = (
        (out / "spec.yaml")
        .read_text()
        .replace("module_factories:make_mlp", "not_imported_xyz:make")
    )
    (out / "spec.yaml").write_text(spec_text)
    with pytest.raises(UserError, match="not_imported_xyz"):
        widthwise.load_member(out, 16, 0)


def test_from_module_registers_a_family_and_attention_notice() -> None:
    from module_factories import make_mlp

    name = from_module(make_mlp, "test_from_module_mlp")
    assert from_module(make_mlp, "test_from_module_mlp") == name  # idempotent
    opts = FAMILIES.validate_options(name, {"kwargs": {"bias": False}, "layers": ["l*"]})
    net = build_network(name, 32, (8,), 1, opts)
    assert net.layers == ("l1", "l2") and net.family == name


def test_role_override_and_ambiguous_raw_parameter() -> None:
    with pytest.raises(UserError, match=r"'pos' has shape \(16, 32\) at width 32 and \(16, 64\)"):
        trainer_for(spec_for("make_raw", GEG, SGD), BASE)
    spec = spec_for("make_raw", GEG, SGD, options={"roles": {"pos": "input"}})
    assert roles(spec)["pos"] == (Role.INPUT, 1)


def test_factory_in_a_spec_is_code() -> None:
    spec = spec_for("make_mlp", GEG, SGD)
    with pytest.raises(UserError, match="model.options.factory: imports"):
        refuse_code(spec)
    refuse_code(spec, ["module_factories"])  # --import module_factories: trusted


def test_allowing_a_factory_imports_it_and_keeps_no_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust is the import itself: no process-wide list of allowed names outlives it."""
    import sys
    from types import SimpleNamespace

    from widthwise.families import module as fm

    (tmp_path / "ww_trust_probe.py").write_text("def make(width):\n    raise ValueError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ww_trust_probe", raising=False)
    with pytest.raises(UserError, match="importing 'ww_trust_probe'.*runs its code"):
        fm.load_factory("ww_trust_probe:make")
    assert "ww_trust_probe" not in sys.modules
    spec = SimpleNamespace(
        model=SimpleNamespace(family="module", options={"factory": "ww_trust_probe:make"})
    )
    fm.trust_factory(spec)
    assert "ww_trust_probe" in sys.modules
    assert callable(fm.load_factory("ww_trust_probe:make"))
    assert not [v for v in vars(fm).values() if isinstance(v, set)]
    bad = SimpleNamespace(
        model=SimpleNamespace(family="module", options={"factory": "ww_nope_1:f"})
    )
    with pytest.raises(UserError, match=r"^model.options.factory: cannot import 'ww_nope_1'"):
        fm.trust_factory(bad)


BAD = [
    ({"factory": "no_such_module_xyz:f"}, "cannot import 'no_such_module_xyz'"),
    ({"factory": "module_factories:NOT_CALLABLE"}, "is a int, not a callable"),
    ({"factory": "module_factories:nothing"}, "has no attribute 'nothing'"),
    ({"factory": "module_factories:raises"}, "raised ValueError at width 32"),
    ({"factory": "module_factories:not_a_module"}, "returned a dict at width 32"),
    ({"factory": "module_factories:fixed_size"}, "no parameter changes between widths"),
    ({"factory": "module_factories:make_mlp", "layers": ["l9*"]}, "model.options.layers: 'l9*'"),
    (
        {"factory": "module_factories:make_mlp", "roles": {"nope": "hidden"}},
        "model.options.roles.nope: names no trainable tensor",
    ),
    ({"factory": "module_factories"}, "expected 'package.module:function'"),
    ({"factory": "module_factories:make_counter"}, "buffer 'running' changes during the forward"),
    (
        {"factory": "module_factories:make_clamped"},
        "'l2.weight' has shape (64, 32) at width 32, (64, 64) at width 64 and (128, 128) at "
        "width 128: its dim 0 scales with width only between some of them",
    ),
]


@pytest.mark.quick
@pytest.mark.parametrize(("options", "needle"), BAD, ids=[b[1][:24] for b in BAD])
def test_bad_factory_is_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: dict, needle: str
) -> None:
    raw = {
        "name": "bad",
        "model": {"family": "module", "options": options},
        "widths": [16, 32],
        "seeds": 1,
        "steps": 2,
        "batch_size": 8,
        "data": {"stream": "gegenbauer", "options": {}},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "device": "cpu",
        "out": str(tmp_path / "study"),
    }
    path = write_spec(tmp_path / "bad.yaml", raw)
    code = main(["run", str(path), "--quiet", "--allow-code", "--import", "module_factories"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1, err
    assert needle in err[0], err[0]
    assert not (tmp_path / "study").exists()


def test_coord_check_prints_the_roles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    raw = {
        "name": "cc",
        "model": {"family": "module", "options": {"factory": "module_factories:make_mlp"}},
        "widths": [16, 32],
        "seeds": 1,
        "steps": 2,
        "batch_size": 8,
        "optimizer": {"name": "sgd", "lr": 0.1},
        "data": {"stream": "gegenbauer", "options": {"dim": 4}},
        "device": "cpu",
    }
    path = write_spec(tmp_path / "cc.yaml", raw)
    assert main(["coord-check", str(path), "--steps", "1"]) == 2  # the factory is code
    capsys.readouterr()
    assert main(["coord-check", str(path), "--steps", "1", "--import", "module_factories"]) == 0
    out = capsys.readouterr().out
    assert "module at width 16 under mup" in out and "l2.weight" in out and "hidden" in out


def test_attention_notice_for_sdpa_without_the_scale() -> None:
    class SDPA(torch.nn.Module):
        def __init__(self, width: int, out_dim: int) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(out_dim, width)
            self.qkv = torch.nn.Linear(width, 3 * width)
            self.head = torch.nn.Linear(width, out_dim)

        def forward(self, idx):
            q, k, v = self.qkv(self.emb(idx)).unflatten(-1, (3, 2, -1)).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.head(o.transpose(1, 2).flatten(2))

    name = from_module(lambda width, out_dim: SDPA(width, out_dim), "test_sdpa_notice")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_network(name, 16, (8,), 16, FAMILIES.validate_options(name, {}))
    assert any("left at 1/sqrt(d_head)" in str(w.message) for w in caught)


@pytest.mark.quick
@pytest.mark.parametrize("family", ["module_tied", "mlp"])
def test_load_member_outputs_equal_test_logits(tmp_path: Path, family: str) -> None:
    import widthwise

    if family == "mlp":
        model = {"family": "mlp", "options": {"depth": 3}}
        data = GEG
    else:
        model = {"family": "module", "options": {"factory": "module_factories:make_tied"}}
        data = TOK
    raw = {
        "name": "lm",
        "model": model,
        "widths": [16, 48],
        "base_width": 16,
        "seeds": 2,
        "parameterization": "mup",
        "optimizer": ADAM,
        "steps": 6,
        "batch_size": 8,
        "data": {**data, "probe_points": 8},
        "probes": {"test": {"at": ["end"]}},
        "device": "cpu",
        "out": str(tmp_path / "study"),
    }
    out = widthwise.run(validate_spec(raw), trusted_imports=["module_factories"])
    ds = widthwise.open_study(out)
    x = torch.as_tensor(ds.probe_x.values) if "probe_x" in ds else None
    if x is None:
        import numpy as np

        x = torch.as_tensor(np.load(out / "probe_set.npz")["x"])
    for seed in (0, 1):
        member = widthwise.load_member(out, 48, seed)
        if family != "mlp":
            assert type(member).__name__ == "TiedLM"
            assert member.head.weight is member.emb.weight  # still tied
        with torch.no_grad():
            got = member(x.long() if family != "mlp" else x)
        want = torch.as_tensor(ds.test_logits.sel(width=48, seed=seed).isel(test_step=-1).values)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_hugging_face_gpt2_tied_roles_and_vmap() -> None:
    """GPT-2 with tied input/output embeddings (transformers' default): PyTorch's plain
    ensembling recipe gets its logits wrong; bound explicitly, vmap equals the loop."""
    pytest.importorskip("transformers")
    losses = {}
    for strategy in ("vmap", "loop"):
        spec = spec_for("make_gpt2", TOK, ADAM, ensemble=strategy, seeds=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tr = trainer_for(spec)
        assert tr.ensemble.strategy == strategy
        r = {p.name: (p.role, p.fan_in) for p in tr.network.params}
        assert r["transformer.wte.weight"] == (Role.INPUT, 1)
        assert r["transformer.h.0.attn.c_attn.weight"] == (Role.HIDDEN, WIDTH)  # Conv1D (in, out)
        assert r["transformer.h.0.mlp.c_proj.weight"] == (Role.HIDDEN, 4 * WIDTH)
        assert "lm_head.weight" not in r
        assert tr.network.apply.readout_mult == {"lm_head": pytest.approx(BASE / WIDTH)}
        if strategy == "vmap":
            assert tr.network.apply.check_vmap() == (True, "")
            assert any("left at 1/sqrt(d_head)" in str(w.message) for w in caught)
        losses[strategy] = torch.stack([tr.train_step() for _ in range(2)])
    torch.testing.assert_close(losses["vmap"], losses["loop"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_hugging_face_gpt2_study_runs_to_the_end_with_a_report(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import widthwise
    from widthwise.report import build_report

    probes = {"train_loss": {"every": 1}, "test": {"every": 4}, "kernels": {"points": 8}}
    spec = spec_for("make_gpt2", TOK, ADAM, seeds=2, probes=probes, out=str(tmp_path / "s"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = widthwise.run(spec, trusted_imports=["module_factories"])
    ds = widthwise.open_study(out)
    assert (ds.status == "done").all() and ds.sizes["kernels_layer"] >= 4
    assert Path(build_report(out)).exists()
    member = widthwise.load_member(out, WIDTH, 1)
    assert type(member).__name__ == "GPT2LMHeadModel"
    assert member.lm_head.weight is member.transformer.wte.weight
    x = torch.as_tensor(np.load(out / "probe_set.npz")["x"]).long()
    with torch.no_grad():
        got = member(x).logits
    want = torch.as_tensor(ds.test_logits.sel(width=WIDTH, seed=1).isel(test_step=-1).values)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
