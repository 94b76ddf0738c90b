"""The attention hook: a family's ``attn/<layer>`` taps, recorded by the ``attention`` probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_spec_dict, write_spec
from tiny_attention_family import SEQ, TinyAttentionOptions, build_tiny_attention, register

import widthwise
from widthwise.ensemble import Ensemble
from widthwise.errors import UserError
from widthwise.families import FAMILIES
from widthwise.families.mlp import MLPOptions
from widthwise.parameterization import RuleContext, rules_for
from widthwise.probes import ProbeContext
from widthwise.probes.attention import AttentionOptions, attention_probe
from widthwise.streams import STREAMS

register()


def context(network, seeds=2, points=6, strategy="auto", in_shape=None):
    rules = rules_for(
        "mup", list(network.params), RuleContext(width=network.width, base_width=8, optimizer="sgd")
    )
    ens = Ensemble(
        network, rules, range(seeds), loss="mse", device=torch.device("cpu"), strategy=strategy
    )
    stream = STREAMS.get("tiny_seq")(0, STREAMS.validate_options("tiny_seq", {}))
    x, y = stream.probe_set(points)
    if in_shape is not None:
        x = x.reshape(points, *in_shape)
    return ProbeContext(
        step=0,
        ensemble=ens,
        params=ens.init_params(),
        probe_x=torch.as_tensor(x),
        probe_y=torch.as_tensor(y),
        alive=torch.ones(seeds, dtype=torch.bool),
        stream=stream,
        lr=0.1,
    )


def softmax_by_hand(ctx: ProbeContext, member: int, x: torch.Tensor, heads: int) -> np.ndarray:
    """The module's attention probabilities, recomputed with torch.softmax: (B, H, T, T)."""
    w = ctx.ensemble.effective({k: v[member].detach() for k, v in ctx.params.items()})
    h = x @ w["embed.weight"].T
    b, t, n = h.shape
    q = (h @ w["a1.query"].T).reshape(b, t, heads, n // heads).transpose(1, 2)
    k = (h @ w["a1.key"].T).reshape(b, t, heads, n // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (n // heads), dim=-1).double().numpy()


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("heads", [1, 2])
def test_attention_shape_rows_and_values(strategy, heads):
    net = build_tiny_attention(16, (SEQ, 4), 1, TinyAttentionOptions(heads=heads))
    ctx = context(net, seeds=3, strategy=strategy)
    dims, a = attention_probe(ctx, AttentionOptions(points=4))["attention"]
    assert dims == ("seed", "attention_layer", "attention_point", "head", "query", "key")
    assert a.shape == (3, 1, 4, heads, SEQ, SEQ)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-6)
    assert (a >= 0).all()
    for s in range(3):
        own = softmax_by_hand(ctx, s, ctx.probe_x[:4], heads)
        np.testing.assert_allclose(a[s, 0], own, rtol=1e-5, atol=1e-7)
    # and exactly what the family's own forward returns for that member
    w = ctx.ensemble.effective({k: v[1].detach() for k, v in ctx.params.items()})
    _, taps = net.apply(w, ctx.probe_x[:4], True)
    np.testing.assert_allclose(a[1, 0], taps["attn/a1"].numpy(), rtol=1e-6, atol=1e-7)


def test_attention_options_and_errors():
    net = build_tiny_attention(8, (SEQ, 4), 1, TinyAttentionOptions())
    ctx = context(net, points=3)
    _, a = attention_probe(ctx, AttentionOptions(layers=["a1"], points=10))["attention"]
    assert a.shape[2] == 3  # no more points than the probe set has
    with pytest.raises(UserError, match="unknown layer.*'a9'.*a1"):
        attention_probe(ctx, AttentionOptions(layers=["a9"]))
    assert attention_probe(ctx, AttentionOptions())["attention_layer"][0] == ("attention_layer",)
    mlp = FAMILIES.get("mlp")(8, (SEQ * 4,), 1, MLPOptions())
    with pytest.raises(UserError, match="exposes no attention layers"):
        attention_probe(context(mlp, in_shape=(SEQ * 4,)), AttentionOptions())


def test_attention_end_to_end(tmp_path):
    raw = tiny_spec_dict(
        tmp_path / "study",
        model={"family": "tiny_attention", "options": {"heads": 2}},
        data={"stream": "tiny_seq", "seed": 0, "probe_points": 8},
        widths=[8, 16],
        steps=6,
        probes={
            "train_loss": {"every": 1},
            "attention": {"every": 3, "layers": ["a1"], "points": 2},
            "kernels": {"at": ["end"], "points": 8},
        },
    )
    out = widthwise.run(widthwise.load_spec(write_spec(tmp_path / "s.yaml", raw)))
    ds = widthwise.open_study(out)
    a = ds["attention"]
    assert a.dims == (
        "width", "seed", "attention_step", "attention_layer", "attention_point", "head", "query", "key"
    )  # fmt: skip
    assert a.shape == (2, 2, 3, 1, 2, 2, SEQ, SEQ)
    assert list(ds["attention_step"].values) == [0, 3, 6]
    assert list(ds["attention_layer"].values) == ["a1"]
    np.testing.assert_allclose(a.sum("key"), 1.0, atol=1e-6)
    assert ds["feature_kernel"].sizes["kernels_point_i"] == 8
