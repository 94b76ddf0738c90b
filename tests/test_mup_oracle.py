"""Oracle: widthwise's ``mup`` equals microsoft's ``mup`` package step by step.

A torch ``nn.Module`` MLP with ``nn.Linear`` hidden layers and ``mup.MuReadout``
is given base shapes with ``mup.set_base_shapes`` and trained with
``MuSGD``/``MuAdam``/``MuAdamW``. Its initial weights (after mup's readout
rescaling) are copied into widthwise's stacked raw parameters: widthwise's raw
``out.weight`` *is* ``MuReadout.weight`` and the forward multiplier 1/m plays the
role of MuReadout's ``x / width_mult``. Both then train on the same batches.

Tolerance: float32 rounding, ``rtol=1e-5, atol=1e-6`` on losses and on every
weight after every step (Adam with eps 1e-6, see ``ADAM_EPS``); the two sides
order a few multiplications differently, measured gap <= 1.2e-7 on losses and
<= 6e-8 on weights. Every tensor moves by far more than the tolerance over the
5 steps, so a wrong lr, weight decay or multiplier fails the test.
"""

from __future__ import annotations

import math
from typing import Any

import mup
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from widthwise.parameterization import RuleContext, rules_for
from widthwise.spec import StudySpec, validate_spec
from widthwise.streams import STREAMS
from widthwise.trainer import EnsembleTrainer

D_IN = 16
BASE = 32
BATCH = 32
STEPS = 5
RTOL, ATOL = 1e-5, 1e-6
# Adam's eps on both sides. With the default 1e-8, a gradient entry of order eps
# (a ReLU unit active on one example) turns float32 rounding of the gradient
# (~1e-7 of its largest entry) into update differences up to lr·δg/eps ~ 2e-6:
# the optimizer amplifying rounding, not a disagreement of the rules.
ADAM_EPS = 1e-6
CPU = torch.device("cpu")


class MupMLP(nn.Module):
    """Depth-3 ReLU MLP in mup's style; parameter names match widthwise's ``mlp``."""

    def __init__(
        self, width: int, bias: bool, d_in: int = D_IN, out: int = 1, output_mult: float = 1.0
    ) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width, bias=bias)
        self.l2 = nn.Linear(width, width, bias=bias)
        self.out = mup.MuReadout(width, out, bias=bias, output_mult=output_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.l2(F.relu(self.l1(x)))))


def make_mup_model(
    width: int, bias: bool, seed: int = 0, out: int = 1, output_mult: float = 1.0
) -> MupMLP:
    torch.manual_seed(seed)
    model = MupMLP(width, bias, out=out, output_mult=output_mult)
    mup.set_base_shapes(model, MupMLP(BASE, bias, out=out), delta=MupMLP(2 * BASE, bias, out=out))
    return model


def spec_for(
    width: int, bias: bool, optimizer: dict[str, Any], param: str | dict = "mup", **extra: Any
) -> StudySpec:
    raw = {
        "name": "oracle",
        "model": {"family": "mlp", "options": {"depth": 3, "bias": bias}},
        "widths": [width],
        "base_width": BASE,
        "seeds": [0],
        "parameterization": param,
        "optimizer": optimizer,
        "steps": STEPS,
        "batch_size": BATCH,
        "data": {"stream": "gegenbauer", "seed": 3, "options": {"dim": D_IN, "degree": 2}},
        "device": "cpu",
        "ensemble": "vmap",
        **extra,
    }
    return validate_spec(raw)


def make_trainer(spec: StudySpec, width: int) -> EnsembleTrainer:
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, CPU)


def mup_optimizer(model: nn.Module, opt: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr, wd = opt["name"], opt["lr"], opt.get("weight_decay", 0.0)
    if name == "sgd":
        return mup.MuSGD(
            model.parameters(), lr=lr, momentum=opt.get("momentum", 0.0), weight_decay=wd
        )
    cls = mup.MuAdam if name == "adam" else mup.MuAdamW
    return cls(model.parameters(), lr=lr, weight_decay=wd, eps=opt.get("eps", 1e-8))


CASES = [
    # (width, bias, optimizer)
    (64, False, {"name": "sgd", "lr": 0.05}),
    (256, False, {"name": "sgd", "lr": 0.05}),
    (256, False, {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    (64, False, {"name": "adam", "lr": 3e-3, "eps": ADAM_EPS}),
    (256, False, {"name": "adam", "lr": 3e-3, "eps": ADAM_EPS}),
    (256, False, {"name": "adamw", "lr": 3e-3, "weight_decay": 0.1, "eps": ADAM_EPS}),
    (256, True, {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
    (256, True, {"name": "adam", "lr": 3e-3, "eps": ADAM_EPS}),
    (96, True, {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),  # m = 3
]


OUTPUT_MULT_CASES = [
    # parameterization.output_multiplier α = MuReadout(output_mult=α) (no readout bias:
    # mup scales the readout's input, widthwise its output; without a bias the same)
    (256, False, {"name": "sgd", "lr": 0.05, "momentum": 0.9}, 2.0),
    (256, False, {"name": "adam", "lr": 3e-3, "eps": ADAM_EPS}, 0.25),
]


@pytest.mark.parametrize(("width", "bias", "opt"), CASES)
def test_mup_matches_mup_package_step_by_step(width: int, bias: bool, opt: dict[str, Any]) -> None:
    _step_by_step(width, bias, opt)


@pytest.mark.parametrize(("width", "bias", "opt", "alpha"), OUTPUT_MULT_CASES)
def test_output_multiplier_is_mureadout_output_mult(
    width: int, bias: bool, opt: dict[str, Any], alpha: float
) -> None:
    _step_by_step(width, bias, opt, alpha)


def _step_by_step(width: int, bias: bool, opt: dict[str, Any], alpha: float = 1.0) -> None:
    model = make_mup_model(width, bias, output_mult=alpha)
    optim = mup_optimizer(model, opt)
    param = "mup" if alpha == 1.0 else {"name": "mup", "output_multiplier": alpha}
    spec = spec_for(width, bias, opt, param)
    trainer = make_trainer(spec, width)
    ref = dict(model.named_parameters())
    assert set(ref) == set(trainer.params)
    with torch.no_grad():
        for k, p in trainer.params.items():
            p.copy_(ref[k].detach()[None])
    start = {k: v.detach().clone() for k, v in ref.items()}

    for t in range(STEPS):
        x, y = (torch.as_tensor(a) for a in trainer.stream.batch(t, BATCH))
        ours = trainer.train_step()
        optim.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optim.step()
        torch.testing.assert_close(ours[0], loss.detach(), rtol=RTOL, atol=ATOL)
        for k, p in ref.items():
            torch.testing.assert_close(
                trainer.params[k].detach()[0], p.detach(), rtol=RTOL, atol=ATOL, msg=f"{k} step {t}"
            )

    # the oracle has teeth: every tensor moved by much more than the tolerance
    for k, p in ref.items():
        moved = (p.detach() - start[k]).abs().max().item()
        assert moved > 100 * ATOL, (k, moved)


@pytest.mark.parametrize("width", [64, 256])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_lr_and_wd_scales_equal_mup_param_groups(width: int, opt: str) -> None:
    """Each tensor's lr and weight decay equal the group mup's optimizer puts it in."""
    model = make_mup_model(width, bias=True)
    cfg = {"name": opt, "lr": 0.5, "weight_decay": 0.25}
    optim = mup_optimizer(model, cfg)
    ids = {id(p): k for k, p in model.named_parameters()}
    got = {
        ids[id(p)]: (g["lr"], g["weight_decay"]) for g in optim.param_groups for p in g["params"]
    }
    trainer = make_trainer(spec_for(width, True, cfg), width)
    ours = {g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
    assert set(ours) == set(got)
    for k in got:
        assert ours[k] == pytest.approx(got[k], rel=1e-12), k
    m = width / BASE
    # and the table of DESIGN.md, by hand: SGD ×m on input, vectors, readout; Adam ÷m hidden
    if opt == "sgd":
        assert ours["l1.weight"][0] == pytest.approx(0.5 * m)
        assert ours["l2.weight"][0] == pytest.approx(0.5)
        assert ours["out.weight"][0] == pytest.approx(0.5 * m)
        assert ours["l2.bias"][0] == pytest.approx(0.5 * m)
        assert ours["out.bias"][0] == pytest.approx(0.5)
    else:
        assert ours["l1.weight"][0] == pytest.approx(0.5)
        assert ours["l2.weight"] == pytest.approx((0.5 / m, 0.25 * m))
        assert ours["out.weight"][0] == pytest.approx(0.5)


def test_own_init_has_mup_statistics() -> None:
    """widthwise's own mup init: the SP init with the readout scaled by √m, as mup does."""
    width, base, sigma, classes = 1024, 64, 1.5, 10
    m = width / base
    raw = {
        "name": "init",
        "model": {"family": "mlp", "options": {"depth": 3}},
        "widths": [width],
        "base_width": base,
        "seeds": [0, 1],
        "parameterization": {"name": "mup", "sigma": sigma},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "steps": 1,
        "batch_size": 8,
        "data": {"stream": "teacher", "options": {"dim": D_IN, "classes": classes}},
        "device": "cpu",
    }
    trainer = make_trainer(validate_spec(raw), width)
    params = {k: v.detach() for k, v in trainer.params.items()}
    expected_raw = {
        "l1.weight": sigma / math.sqrt(D_IN),
        "l2.weight": sigma / math.sqrt(width),
        "out.weight": sigma * math.sqrt(m) / math.sqrt(width),
    }
    for k, std in expected_raw.items():
        assert params[k].std().item() == pytest.approx(std, rel=0.03), k
        assert params[k].mean().abs().item() < 0.05 * std, k

    # the same statistics from mup: SP init N(0, σ²/fan_in), then set_base_shapes
    torch.manual_seed(0)
    model = MupMLP(width, bias=False, out=classes)
    for lin in (model.l1, model.l2, model.out):
        nn.init.normal_(lin.weight, std=sigma / math.sqrt(lin.in_features))
    mup.set_base_shapes(
        model, MupMLP(base, False, out=classes), delta=MupMLP(2 * base, False, out=classes)
    )
    for k, p in model.named_parameters():
        assert p.detach().std().item() == pytest.approx(params[k].std().item(), rel=0.05), k

    # effective readout = raw / m (MuReadout's x / width_mult), others unchanged
    eff = trainer.ensemble.effective(trainer.params)
    torch.testing.assert_close(eff["out.weight"], params["out.weight"] / m, rtol=0, atol=0)
    assert eff["l2.weight"] is trainer.params["l2.weight"]
    # so the effective readout std is σ/(√m·√fan_in): outputs at init shrink like 1/√m
    assert eff["out.weight"].std().item() == pytest.approx(sigma / math.sqrt(m * width), rel=0.03)


def _run(spec: StudySpec, width: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    trainer = make_trainer(spec, width)
    losses = [trainer.train_step() for _ in range(STEPS)]
    return losses, trainer.ensemble.effective({k: v.detach() for k, v in trainer.params.items()})


@pytest.mark.parametrize(
    "opt",
    [
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
        {"name": "adamw", "lr": 3e-3, "weight_decay": 0.1},
    ],
)
def test_mup_equals_sp_exactly_at_base_width(opt: dict[str, Any]) -> None:
    sp = _run(spec_for(BASE, True, opt, {"name": "sp", "sigma": 1.3}), BASE)
    mp = _run(spec_for(BASE, True, opt, {"name": "mup", "sigma": 1.3}), BASE)
    for a, b in zip(sp[0], mp[0]):
        assert torch.equal(a, b)
    for k in sp[1]:
        assert torch.equal(sp[1][k], mp[1][k]), k
    # and both trained: the loss changed
    assert not torch.equal(sp[0][0], sp[0][-1])


def test_ntp_follows_sp_at_base_width_for_sgd() -> None:
    """NTP with lr scale base_fan_in/σ² moves the effective weights exactly as SP (App. D)."""
    opt = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    sp = _run(spec_for(BASE, True, opt, {"name": "sp", "sigma": 1.3}), BASE)
    nt = _run(spec_for(BASE, True, opt, {"name": "ntp", "sigma": 1.3}), BASE)
    for a, b in zip(sp[0], nt[0]):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    for k in sp[1]:
        torch.testing.assert_close(sp[1][k], nt[1][k], rtol=RTOL, atol=ATOL, msg=k)
    # ... but not at a wider width (NTP is lazier there): the rules really differ
    ctx = RuleContext(width=4 * BASE, base_width=BASE, optimizer="sgd", sigma=1.3)
    trainer = make_trainer(spec_for(4 * BASE, True, opt, {"name": "ntp", "sigma": 1.3}), 4 * BASE)
    assert rules_for("ntp", list(trainer.network.params), ctx)["l2.weight"].multiplier == (
        pytest.approx(1.3 / math.sqrt(4 * BASE))
    )
