"""The rule tables of sp, mup, ntp and mf against hand-computed numbers (u-μP:
test_parameterization_umup.py).

Every expected value below is written out by hand from the formulas in DESIGN.md
and the parameterization module's docstring (W = multiplier·w, w ~ N(0, std²),
lr·lr_scale, weight_decay·wd_scale), for an MLP with input dim 16.
"""

from __future__ import annotations

import math

import pytest
import torch

from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.parameterization import (
    PARAMETERIZATIONS,
    NetworkRules,
    Parameterization,
    ParamRule,
    ParamSpec,
    Role,
    RuleContext,
    network_rules_for,
    rules_for,
)
from widthwise.spec import validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

pytestmark = pytest.mark.quick

D_IN = 16


def mlp_params(width: int, out: int = 1) -> list[ParamSpec]:
    net = FAMILIES.get("mlp")(width, (D_IN,), out, MLPOptions(depth=3, bias=True))
    return list(net.params)


def rules(
    name: str, width: int, base: int, opt: str = "sgd", sigma: float = 1.0, **options
) -> dict[str, ParamRule]:
    """The rules of the test MLP; ``options`` are the parameterization's own (e.g. gamma0)."""
    ctx = RuleContext(width, base, opt, sigma, options=options)  # type: ignore[arg-type]
    return rules_for(name, mlp_params(width), ctx)


def check(got: dict[str, ParamRule], expected: dict[str, tuple[float, ...]]) -> None:
    """expected: name -> (multiplier, init_std, lr_scale[, wd_scale])."""
    assert set(got) == set(expected)
    for k, exp in expected.items():
        r = got[k]
        values = (r.multiplier, r.init_std, r.lr_scale, r.wd_scale)[: len(exp)]
        assert values == pytest.approx(exp, rel=1e-12), k


def test_registry_and_mlp_roles() -> None:
    assert {"sp", "mup", "ntp", "mf"} <= set(PARAMETERIZATIONS.names())
    specs = {p.name: p for p in mlp_params(256, out=3)}
    assert {k: (p.role, p.fan_in, p.shape) for k, p in specs.items()} == {
        "l1.weight": (Role.INPUT, 16, (256, 16)),
        "l1.bias": (Role.VECTOR, 1, (256,)),
        "l2.weight": (Role.HIDDEN, 256, (256, 256)),
        "l2.bias": (Role.VECTOR, 1, (256,)),
        "out.weight": (Role.OUTPUT, 256, (3, 256)),
        "out.bias": (Role.FIXED, 1, (3,)),
    }
    assert specs["l2.weight"].base_fan_in(4.0) == 64
    assert specs["l1.weight"].base_fan_in(4.0) == 16


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("width", [64, 1024])
def test_sp(opt: str, width: int) -> None:
    s = 1 / math.sqrt(width)
    check(
        rules("sp", width, 64, opt, sigma=2.0),
        {
            "l1.weight": (1, 2 / 4, 1, 1),
            "l1.bias": (1, 0, 1, 1),
            "l2.weight": (1, 2 * s, 1, 1),
            "l2.bias": (1, 0, 1, 1),
            "out.weight": (1, 2 * s, 1, 1),
            "out.bias": (1, 0, 1, 1),
        },
    )


def test_mup_sgd_width_256_base_64() -> None:  # m = 4, fan-in 256
    check(
        rules("mup", 256, 64, "sgd", sigma=2.0),
        {
            "l1.weight": (1, 2 / 4, 4, 1 / 4),
            "l1.bias": (1, 0, 4, 1 / 4),
            "l2.weight": (1, 2 / 16, 1, 1),
            "l2.bias": (1, 0, 4, 1 / 4),
            "out.weight": (1 / 4, 2 * 2 / 16, 4, 1 / 4),  # std σ·√m/√fan_in
            "out.bias": (1, 0, 1, 1),
        },
    )


def test_mup_adam_width_256_base_64() -> None:
    check(
        rules("mup", 256, 64, "adam", sigma=2.0),
        {
            "l1.weight": (1, 2 / 4, 1, 1),
            "l1.bias": (1, 0, 1, 1),
            "l2.weight": (1, 2 / 16, 1 / 4, 4),
            "l2.bias": (1, 0, 1, 1),
            "out.weight": (1 / 4, 4 / 16, 1, 1),
            "out.bias": (1, 0, 1, 1),
        },
    )


def test_mup_adam_width_1024_base_32() -> None:  # m = 32, fan-in 1024
    check(
        rules("mup", 1024, 32, "adam"),
        {
            "l1.weight": (1, 1 / 4, 1, 1),
            "l1.bias": (1, 0, 1, 1),
            "l2.weight": (1, 1 / 32, 1 / 32, 32),
            "l2.bias": (1, 0, 1, 1),
            "out.weight": (1 / 32, math.sqrt(32) / 32, 1, 1),
            "out.bias": (1, 0, 1, 1),
        },
    )


def test_mup_zero_init_options() -> None:
    r = rules("mup", 256, 64, "sgd", readout_zero_init=True)
    assert r["out.weight"].init_std == 0 and r["out.weight"].multiplier == 1 / 4
    assert r["l2.weight"].init_std == pytest.approx(1 / 16)
    options = PARAMETERIZATIONS.validate_options("mup", {"query_zero_init": True})
    ctx = RuleContext(256, 64, "adam", options=options)
    query = ParamSpec("q", (256, 256), Role.HIDDEN, 256, tags=frozenset({"query"}))
    key = ParamSpec("k", (256, 256), Role.HIDDEN, 256)
    fn = PARAMETERIZATIONS.get("mup")
    assert fn(query, ctx).init_std == 0 and fn(query, ctx).lr_scale == 1 / 4
    assert fn(key, ctx).init_std == pytest.approx(1 / 16)


def test_ntp_width_256_base_64() -> None:
    # multiplier σ/√fan_in, w ~ N(0,1); SGD lr base_fan_in/σ², Adam lr √base_fan_in/σ
    sgd = {
        "l1.weight": (2 / 4, 1, 16 / 4, 4 / 16),
        "l1.bias": (1, 0, 1, 1),
        "l2.weight": (2 / 16, 1, 64 / 4, 4 / 64),
        "l2.bias": (1, 0, 1, 1),
        "out.weight": (2 / 16, 1, 64 / 4, 4 / 64),
        "out.bias": (1, 0, 1, 1),
    }
    check(rules("ntp", 256, 64, "sgd", sigma=2.0), sgd)
    adam = dict(sgd)
    adam["l1.weight"] = (2 / 4, 1, 4 / 2, 2 / 4)
    adam["l2.weight"] = adam["out.weight"] = (2 / 16, 1, 8 / 2, 2 / 8)
    check(rules("ntp", 256, 64, "adam", sigma=2.0), adam)


@pytest.mark.parametrize(("width", "gamma0"), [(64, 1.0), (256, 0.5), (1024, 2.0)])
def test_mf(width: int, gamma0: float) -> None:
    lr = gamma0**2 * width
    check(
        rules("mf", width, 64, "sgd", gamma0=gamma0),
        {
            "l1.weight": (1 / 4, 1, lr),
            "l1.bias": (1, 0, lr),
            "l2.weight": (1 / math.sqrt(width), 1, lr),
            "l2.bias": (1, 0, lr),
            "out.weight": (1 / (gamma0 * width), 1, lr),
            "out.bias": (1 / gamma0, 0, gamma0**2),
        },
    )


def test_mf_needs_gamma0() -> None:
    with pytest.raises(ValueError, match="gamma0"):
        rules("mf", 64, 64, "sgd")


def _trainer(width: int, param: dict, optimizer: dict, seeds: int = 2) -> EnsembleTrainer:
    spec = validate_spec(
        {
            "name": "p",
            "model": {"family": "mlp", "options": {"depth": 3, "bias": True}},
            "widths": [width],
            "base_width": 32,
            "seeds": seeds,
            "parameterization": param,
            "optimizer": optimizer,
            "steps": 2,
            "batch_size": 16,
            "data": {"stream": "gegenbauer", "options": {"dim": D_IN}},
            "device": "cpu",
            "ensemble": "vmap",
        }
    )
    stream = STREAMS.get("gegenbauer")(0, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, torch.device("cpu"))


def test_optimizer_groups_apply_lr_and_wd_scales() -> None:
    """build_optimizer: lr·lr_scale and weight_decay·wd_scale per tensor (mf: η0·γ0²·n)."""
    t = _trainer(
        128, {"name": "mf", "gamma0": 0.5}, {"name": "sgd", "lr": 0.1, "weight_decay": 0.01}
    )
    groups = {g["name"]: g for g in t.optimizer.param_groups}
    assert groups["l2.weight"]["lr"] == pytest.approx(0.1 * 0.25 * 128)
    assert groups["out.bias"]["lr"] == pytest.approx(0.1 * 0.25)
    t = _trainer(128, {"name": "mup"}, {"name": "adam", "lr": 0.1, "weight_decay": 0.01})
    groups = {g["name"]: g for g in t.optimizer.param_groups}
    assert groups["l2.weight"]["lr"] == pytest.approx(0.1 / 4)
    assert groups["l2.weight"]["weight_decay"] == pytest.approx(0.01 * 4)
    assert groups["l1.weight"]["lr"] == pytest.approx(0.1)


def test_init_uses_rule_std() -> None:
    """Raw tensors drawn with the rule's std: ntp/mf N(0,1); sp σ/√fan_in; biases 0."""
    ntp = _trainer(512, {"name": "ntp", "sigma": 2.0}, {"name": "sgd", "lr": 0.1}, seeds=4)
    assert ntp.params["l2.weight"].std().item() == pytest.approx(1.0, rel=0.01)
    eff = ntp.ensemble.effective(ntp.params)
    assert eff["l2.weight"].std().item() == pytest.approx(2 / math.sqrt(512), rel=0.01)
    assert (ntp.params["l2.bias"] == 0).all()
    sp = _trainer(512, {"name": "sp", "sigma": 2.0}, {"name": "sgd", "lr": 0.1}, seeds=4)
    assert sp.params["l2.weight"].std().item() == pytest.approx(2 / math.sqrt(512), rel=0.01)


def test_mf_center_outputs_zero_at_init() -> None:
    t = _trainer(64, {"name": "mf", "gamma0": 0.1, "center": True}, {"name": "sgd", "lr": 0.5})
    x, _ = t.stream.probe_set(32)
    xt = torch.as_tensor(x)
    plain = _trainer(64, {"name": "mf", "gamma0": 0.1}, {"name": "sgd", "lr": 0.5})
    with torch.no_grad():
        out = t.ensemble.forward(t.params, xt)
        raw = plain.ensemble.forward(plain.params, xt)  # same seeds, not centered
    assert out.shape == (2, 32, 1)
    assert torch.equal(out, torch.zeros_like(out))
    assert raw.abs().max() > 0.1  # the uncentered network is not zero
    t.train_step()
    with torch.no_grad():
        after = t.ensemble.forward(t.params, xt)
    assert after.abs().max() > 0
    # and the centering survives in the checkpointed state
    assert t.state_dict()["params0"] is not None


# -- parameterizations as data (issue 11) ---------------------------------------------
def test_every_parameterization_is_data_with_its_options_model() -> None:
    """Each entry is a Parameterization whose options model (or none) the spec validates."""
    for name in PARAMETERIZATIONS.names():
        entry = PARAMETERIZATIONS.entry(name)
        assert isinstance(entry.obj, Parameterization), name
        assert entry.options is None or entry.options.model_config.get("extra") == "forbid"
    assert PARAMETERIZATIONS.entry("sp").options is None
    assert set(PARAMETERIZATIONS.entry("mf").options.model_fields) == {"gamma0", "center"}
    assert set(PARAMETERIZATIONS.entry("mup").options.model_fields) == {
        "readout_zero_init",
        "query_zero_init",
    }


def test_network_rules_carry_attention_exponent_and_centering() -> None:
    ctx = RuleContext(128, 32, "sgd")
    assert network_rules_for("sp", ctx) == NetworkRules(attn_exponent=0.5)
    assert network_rules_for("ntp", ctx) == NetworkRules(attn_exponent=0.5)
    assert network_rules_for("mup", ctx) == NetworkRules(attn_exponent=1.0)
    mf = RuleContext(128, 32, "sgd", options={"gamma0": 0.5, "center": True})
    assert network_rules_for("mf", mf) == NetworkRules(attn_exponent=1.0, center=True)
    assert not network_rules_for("mf", RuleContext(128, 32, "sgd", options={"gamma0": 1})).center


def test_options_as_a_mapping_or_a_model_give_the_same_rules() -> None:
    model = PARAMETERIZATIONS.validate_options("mf", {"gamma0": 0.5})
    a = rules_for("mf", mlp_params(64), RuleContext(64, 32, "sgd", options=model))
    b = rules_for("mf", mlp_params(64), RuleContext(64, 32, "sgd", options={"gamma0": 0.5}))
    assert a == b


def test_a_plain_rule_function_still_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare ``(ParamSpec, RuleContext) -> ParamRule`` function (the registry's old
    entries) works, asks nothing of the network and trains with any optimizer."""
    from widthwise.parameterization import optimizer_problem
    from widthwise.registry import Entry

    def half(p: ParamSpec, ctx: RuleContext) -> ParamRule:
        return ParamRule(0.5, 1.0, 1.0)

    monkeypatch.setitem(PARAMETERIZATIONS._entries, "half", Entry("half", half, None, "half"))
    assert rules_for("half", mlp_params(64), RuleContext(64, 64, "adam"))["l2.weight"] == (
        ParamRule(0.5, 1.0, 1.0)
    )
    assert network_rules_for("half", RuleContext(64, 64, "adam")) == NetworkRules()
    assert optimizer_problem("half", "adam", "adam") is None
    assert "sgd" in (optimizer_problem("mf", "adamw", "adam") or "")


def test_the_trainer_reads_centering_from_the_network_rules() -> None:
    t = _trainer(64, {"name": "mf", "gamma0": 0.1, "center": True}, {"name": "sgd", "lr": 0.5})
    assert t.network_rules.center and t.ensemble.center
    t = _trainer(64, {"name": "mup"}, {"name": "sgd", "lr": 0.5})
    assert not t.network_rules.center and not t.ensemble.center
