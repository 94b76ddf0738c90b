"""u-μP (Blake et al. 2024), the parameterization registered in one file (issue 11).

Its rules per role against hand-computed numbers; O(1) activations at init across
widths; the abc-symmetry oracle (under SGD, u-μP trains exactly the effective
network of mup with base width 1); a short Adam run; spec options accepted, rejected
and hashed only when set; muP's attention exponent reaching the transformer.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import tiny_spec_dict

from widthwise.errors import SpecError
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.parameterization import (
    PARAMETERIZATIONS,
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

CPU = torch.device("cpu")
D_IN = 16


def mlp_rules(width: int, opt: str, sigma: float = 1.0, **options: Any) -> dict[str, ParamRule]:
    net = FAMILIES.get("mlp")(width, (D_IN,), 3, MLPOptions(depth=3, bias=True))
    ctx = RuleContext(width, 64, opt, sigma, options=options)  # type: ignore[arg-type]
    return rules_for("umup", list(net.params), ctx)


def values(r: ParamRule) -> tuple[float, float, float, float]:
    return (r.multiplier, r.init_std, r.lr_scale, r.wd_scale)


def check(got: dict[str, ParamRule], expected: dict[str, tuple[float, ...]]) -> None:
    """expected: name -> (multiplier, init_std, lr_scale, wd_scale)."""
    assert set(got) == set(expected)
    for k, exp in expected.items():
        assert values(got[k]) == pytest.approx(exp, rel=1e-12), k


@pytest.mark.parametrize("width", [64, 256])
def test_rules_per_role_adam(width: int) -> None:
    """Unit init σ; multipliers 1/√fan_in (input, hidden), α/fan_in (readout); Adam lr
    1/√fan_in for weights, 1 for readout and vectors; wd the inverse. No base width."""
    n = width
    check(
        mlp_rules(width, "adam", 2.0, output_mult=0.5),
        {
            "l1.weight": (1 / 4, 2, 1 / 4, 4),
            "l1.bias": (1, 0, 1, 1),
            "l2.weight": (1 / math.sqrt(n), 2, 1 / math.sqrt(n), math.sqrt(n)),
            "l2.bias": (1, 0, 1, 1),
            "out.weight": (0.5 / n, 2, 1, 1),
            "out.bias": (1, 0, 1, 1),
        },
    )


def test_rules_per_role_sgd() -> None:
    """SGD: μP's SGD moved into unit-scaled form (lr n·width input, n hidden and
    readout, the size of a vector)."""
    check(
        mlp_rules(256, "sgd"),
        {
            "l1.weight": (1 / 4, 1, 16 * 256, 1 / (16 * 256)),
            "l1.bias": (1, 0, 256, 1 / 256),
            "l2.weight": (1 / 16, 1, 256, 1 / 256),
            "l2.bias": (1, 0, 256, 1 / 256),
            "out.weight": (1 / 256, 1, 256, 1 / 256),
            "out.bias": (1, 0, 1, 1),
        },
    )


def test_embedding_lr_rule() -> None:
    """Adam: a lookup (tag ``embedding``, fan-in 1) learns at 1/√width (u-μP Sec. 4.4);
    ``embedding_lr_rule: false`` gives μP's constant."""
    emb = ParamSpec("embed", (50, 128), Role.INPUT, 1, tags=frozenset({"embedding"}))
    dense = ParamSpec("l1", (128, 9), Role.INPUT, 9)
    ctx = RuleContext(128, 32, "adam")
    rules = rules_for("umup", [emb, dense], ctx)
    assert values(rules["embed"]) == pytest.approx((1, 1, 128**-0.5, 128**0.5))
    assert values(rules["l1"]) == pytest.approx((1 / 3, 1, 1 / 3, 3))
    off = RuleContext(128, 32, "adam", options={"embedding_lr_rule": False})
    assert rules_for("umup", [emb], off)["embed"].lr_scale == 1.0
    assert rules_for("umup", [emb], RuleContext(128, 32, "sgd"))["embed"].lr_scale == 128


def test_network_rules_attention_exponent_of_mup() -> None:
    ctx = RuleContext(64, 64, "adam")
    assert network_rules_for("umup", ctx).attn_exponent == 1.0
    assert not network_rules_for("umup", ctx).center


def spec(widths: list[int], optimizer: dict[str, Any], **param: Any) -> Any:
    return validate_spec(
        {
            "name": "umup",
            "model": {"family": "mlp", "options": {"depth": 3, "bias": True}},
            "widths": widths,
            "base_width": param.pop("base_width", None),
            "seeds": 2,
            "parameterization": {"name": param.pop("name", "umup"), **param},
            "optimizer": optimizer,
            "steps": 8,
            "batch_size": 32,
            "data": {"stream": "gegenbauer", "options": {"dim": D_IN}},
            "device": "cpu",
            "dtype": "float64",
        }
    )


def trainer(s: Any, width: int) -> EnsembleTrainer:
    return EnsembleTrainer(s, width, STREAMS.get("gegenbauer")(0, s.stream_options()), CPU)


def test_activations_are_order_one_at_init_across_widths() -> None:
    """Unit init and 1/√fan_in multipliers: every hidden coordinate is O(1) at init,
    the same at every width (within 15%, the fluctuation of two seeds at width 64); the
    readout shrinks like μP's, 1/√width."""
    widths = [64, 256, 1024]
    s = spec(widths, {"name": "adam", "lr": 1.0})
    x = torch.as_tensor(STREAMS.get("gegenbauer")(0, s.stream_options()).probe_set(128)[0])
    acts, outs = [], []
    for w in widths:
        t = trainer(s, w)
        with torch.no_grad():
            out, taps = t.ensemble.forward_taps(t.params, x.double())
        acts.append([float(taps[f"act/{k}"].abs().mean()) for k in t.network.layers])
        outs.append(float(out.abs().mean()))
    for layer in zip(*acts):
        assert min(layer) > 0.1 and max(layer) / min(layer) < 1.15, acts
    assert outs[-1] / outs[0] == pytest.approx(math.sqrt(widths[0] / widths[-1]), rel=0.3), outs


def test_sgd_trains_exactly_mup_with_base_width_one() -> None:
    """abc-symmetry oracle: the effective weights W = multiplier·w of u-μP under SGD are
    those of mup at base width 1 (same draws, same effective init and steps)."""
    opt = {"name": "sgd", "lr": 0.05}
    u = trainer(spec([128], opt), 128)
    m = trainer(spec([128], opt, name="mup", base_width=1), 128)
    for _ in range(5):
        lu, lm = u.train_step(), m.train_step()
        torch.testing.assert_close(lu, lm, rtol=1e-10, atol=0)
    eu, em = u.ensemble.effective(u.params), m.ensemble.effective(m.params)
    for k in eu:
        torch.testing.assert_close(eu[k], em[k], rtol=1e-9, atol=1e-12, msg=k)
    assert (u.params["l2.weight"].std() / m.params["l2.weight"].std()).item() == pytest.approx(
        math.sqrt(128), rel=0.01
    )  # the raw weights differ: unit scale in u-μP


def test_short_adam_run_trains_at_every_width() -> None:
    s = spec([64, 512], {"name": "adam", "lr": 1.0})
    for w in (64, 512):
        t = trainer(s, w)
        losses = torch.stack([t.train_step() for _ in range(8)])  # (step, seed)
        assert torch.isfinite(losses).all() and t.alive.all()
        assert losses[-2:].mean() < 0.8 * losses[:2].mean(), (w, losses.mean(1))


def test_spec_accepts_its_options_and_hashes_them_only_when_set() -> None:
    base = validate_spec(tiny_spec_dict(parameterization="umup"))
    assert base.parameterization.options() == PARAMETERIZATIONS.validate_options("umup", {})
    assert "output_mult" not in base.parameterization.model_dump()
    s = validate_spec(
        tiny_spec_dict(
            parameterization={"name": "umup", "output_mult": 2, "embedding_lr_rule": False}
        )
    )
    opts = s.parameterization.options()
    assert (opts.output_mult, opts.embedding_lr_rule) == (2.0, False)
    assert s.parameterization.model_dump()["output_mult"] == 2
    assert s.hash() != base.hash()
    # a saved spec (every field dumped) validates to the same spec
    again = validate_spec(s.model_dump(mode="json"))
    assert again.hash() == s.hash() and again.parameterization.options() == opts


def test_spec_rejects_unknown_and_bad_options_all_at_once() -> None:
    bad = tiny_spec_dict(
        parameterization={"name": "umup", "gamma0": 1.0, "outptu_mult": 2, "output_mult": -1}
    )
    with pytest.raises(SpecError) as err:
        validate_spec(bad)
    line = str(err.value)
    assert "\n" not in line
    assert "parameterization.gamma0: not an option of 'umup'" in line
    assert "parameterization.outptu_mult: not an option of 'umup'" in line
    assert "output_mult, embedding_lr_rule" in line  # what is allowed
    assert "parameterization.output_mult: Input should be greater than 0" in line
    # mup's options are not u-μP's
    with pytest.raises(SpecError, match="parameterization.readout_zero_init"):
        validate_spec(tiny_spec_dict(parameterization={"name": "umup", "readout_zero_init": True}))
