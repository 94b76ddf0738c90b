"""The ``cnn``, ``resnet18_ln`` and ``transformer`` families (issue 5, "Model families").

Oracles (DESIGN.md): each family trains under every parameterization; the mup
coordinate check is flat in width; the vectorized ensemble equals a loop of
independent models; the learning-rate and weight-decay scales of every tensor
equal the groups microsoft's ``mup`` optimizers build from shapes alone; the
transformer's causal mask hides the future, its attention rows are
probabilities and its scores use 1/d_head under mup.

Two small test-only streams stand in for the real data streams: ``fam_images``
(3×S×S images, 4 classes told apart by a class colour and a class stripe
frequency) and ``fam_tokens`` (length-8 sequences of a fixed random Markov chain
over 15 tokens, vocabulary 16 with the mask token 15; next-token targets, or
masked-LM targets with IGNORE_INDEX on unmasked positions).

Coordinate check (mup, Adam, ``readout_zero_init``, batch 8, 4 seeds, 3 steps,
64 probe points): max/min over widths of mean |activation| after step 3, per
layer, measured with data seed 0 (the test's) and, for robustness, seeds 1 and 2:

* ``cnn`` depth 3, 4×4 images, lr 3e-3, widths 64-512 (8×): seed 0 c1 1.03,
  c2 1.05, c3 1.10, out 1.19; seeds 0-2 hidden ≤ 1.14, out ≤ 1.20. (Narrower
  nets, widths 16-32, still move their features markedly more under Adam: a
  finite-width effect that has faded by width 64 here.)
* ``resnet18_ln`` 8×8 images, lr 3e-3, widths 4-32 (stages up to 256 channels;
  8×): seed 0 hidden ≤ 1.11, out 1.14; seeds 0-2 hidden ≤ 1.12, out ≤ 1.33.
* ``transformer`` depth 2, 2 heads, T 8, lr 1e-2, widths 32-256 (8×): seed 0
  b1 1.04, b2 1.05, out 1.21; seeds 0-2 hidden ≤ 1.10, out ≤ 1.21.

The same runs in sp grow with width: transformer b1 ×6.8, b2 ×5.8 (tested);
cnn out ×10, resnet out ×7.1 (not tested, to save time).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import mup
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny_spec_dict, write_spec
from pydantic import BaseModel, ConfigDict, Field

import widthwise
from widthwise.coordinate_check import coord_check
from widthwise.ensemble import Ensemble, choose_strategy
from widthwise.errors import SpecError, UserError
from widthwise.families import FAMILIES, Network, build_network
from widthwise.families.resnet import EPS, layer_norm
from widthwise.families.transformer import TransformerOptions, build_transformer
from widthwise.losses import IGNORE_INDEX
from widthwise.parameterization import (
    NetworkRules,
    Role,
    RuleContext,
    network_rules_for,
    rules_for,
)
from widthwise.spec import StudySpec, validate_spec
from widthwise.streams import STREAMS, Stream, rng_for
from widthwise.trainer import EnsembleTrainer

CPU = torch.device("cpu")
CLASSES, SEQ, VOCAB = 4, 8, 16
MASK_TOKEN = VOCAB - 1


# -- test-only streams ------------------------------------------------------------------
class ImageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(8, ge=2, description="height = width of the images")


class ImageStream(Stream):
    """x: (3, S, S) float32 = noise + a class colour + horizontal stripes of a class frequency."""

    loss = "cross_entropy"
    out_dim = CLASSES

    def __init__(self, seed: int, options: ImageOptions) -> None:
        super().__init__(seed)
        self.in_shape = (3, options.size, options.size)
        rng = rng_for(seed, 11)
        self.colors = rng.standard_normal((CLASSES, 3))
        self.freqs = rng.integers(1, 4, CLASSES)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.in_shape[1]
        y = rng.integers(0, CLASSES, n)
        stripes = np.sin(2 * np.pi * self.freqs[y][:, None] * np.arange(s)[None] / s)  # (n, S)
        x = rng.standard_normal((n, *self.in_shape)) + 0.7 * self.colors[y][:, :, None, None]
        x = x + stripes[:, None, :, None]
        return x.astype(np.float32), y.astype(np.int64)


class TokenOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    masked: bool = Field(False, description="masked-LM targets instead of next tokens")


class TokenStream(Stream):
    """Token ids (SEQ,) of a Markov chain where each token has two possible successors."""

    loss = "cross_entropy"
    in_shape = (SEQ,)
    out_dim = VOCAB

    def __init__(self, seed: int, options: TokenOptions) -> None:
        super().__init__(seed)
        self.masked = options.masked
        rng = rng_for(seed, 12)
        self.successors = np.stack(
            [rng.choice(MASK_TOKEN, 2, replace=False) for _ in range(MASK_TOKEN)]
        )

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        toks = np.empty((n, SEQ + 1), dtype=np.int64)
        toks[:, 0] = rng.integers(0, MASK_TOKEN, n)
        pick = rng.integers(0, 2, (n, SEQ))
        for t in range(SEQ):
            toks[:, t + 1] = self.successors[toks[:, t], pick[:, t]]
        if not self.masked:
            return toks[:, :-1], toks[:, 1:]
        x = toks[:, :-1].copy()
        mask = rng.random((n, SEQ)) < 0.25
        mask[np.arange(n), rng.integers(0, SEQ, n)] = True  # at least one per sequence
        y = np.where(mask, x, IGNORE_INDEX)
        x[mask] = MASK_TOKEN
        return x, y


TEST_STREAMS = {
    "fam_images": (ImageStream, ImageOptions),
    "fam_tokens": (TokenStream, TokenOptions),
}


def register_test_streams() -> list[str]:
    """Add the test-only streams to STREAMS (once); returns the names this call added."""
    added = []
    for name, (cls, options) in TEST_STREAMS.items():
        if name not in STREAMS:
            STREAMS.register(name, options=options)(cls)
            added.append(name)
    return added


@pytest.fixture(scope="module", autouse=True)
def _test_streams_and_one_thread(single_thread: None) -> Iterator[None]:
    """Test streams registered for this module only (so that other modules, e.g. the
    generated spec reference, never see them); one torch thread for tiny models."""
    added = register_test_streams()
    yield
    for name in added:
        STREAMS._entries.pop(name)  # test-only streams leave the registry as they found it


# -- helpers ----------------------------------------------------------------------------
FAMILY_SETUP: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # family: (model options, data)
    "cnn": ({"depth": 3, "downsample_layers": [2]}, {"stream": "fam_images"}),
    "resnet18_ln": ({}, {"stream": "fam_images"}),
    "transformer": ({"depth": 2, "heads": 2}, {"stream": "fam_tokens"}),
}
FAMILY_NAMES = list(FAMILY_SETUP)


def make_spec(
    family: str,
    widths: list[int],
    *,
    param: str | dict[str, Any] = "mup",
    optimizer: dict[str, Any] | None = None,
    seeds: int | list[int] = 2,
    batch_size: int = 8,
    strategy: str = "auto",
    model_options: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    **extra: Any,
) -> StudySpec:
    options, default_data = FAMILY_SETUP[family]
    raw = {
        "name": "fam",
        "model": {"family": family, "options": {**options, **(model_options or {})}},
        "widths": widths,
        "seeds": seeds,
        "parameterization": param,
        "optimizer": optimizer or {"name": "adam", "lr": 1e-2},
        "steps": 10,
        "batch_size": batch_size,
        "data": {**default_data, "seed": 0, **(data or {})},
        "device": "cpu",
        "ensemble": strategy,
        **extra,
    }
    return validate_spec(raw)


def make_trainer(spec: StudySpec, width: int) -> EnsembleTrainer:
    stream = STREAMS.get(spec.data.stream)(spec.data.seed, spec.stream_options())
    return EnsembleTrainer(spec, width, stream, CPU)


PARAM_OPTIONS = {"mf": {"gamma0": 1.0}}  # options a parameterization requires


def build(family: str, width: int, param: str = "mup", **options: Any) -> Network:
    base, data = FAMILY_SETUP[family]
    stream = STREAMS.get(data["stream"])(0, STREAMS.validate_options(data["stream"], {}))
    opts = FAMILIES.validate_options(family, {**base, **options})
    ctx = RuleContext(width, 8, "sgd", options=PARAM_OPTIONS.get(param))
    return build_network(
        family,
        width,
        stream.in_shape,
        stream.out_dim,
        opts,
        network_rules=network_rules_for(param, ctx),
    )


def member_weights(net: Network, param: str = "mup", seed: int = 0) -> dict[str, torch.Tensor]:
    """Effective weights of one freshly initialized member (base width 8, SGD rules)."""
    rules = rules_for(
        param, list(net.params), RuleContext(width=net.width, base_width=8, optimizer="sgd")
    )
    ens = Ensemble(net, rules, [seed], loss="cross_entropy", device=CPU)
    return {k: v[0].detach() for k, v in ens.effective(ens.init_params()).items()}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(TokenStream(seed, TokenOptions()).probe_set(n)[0])


# -- structure: roles, shapes, taps ------------------------------------------------------
@pytest.mark.quick
def test_cnn_roles_shapes_and_taps() -> None:
    net = build("cnn", 16)
    roles = {p.name: (p.role, p.shape, p.fan_in) for p in net.params}
    assert roles["c1.weight"] == (Role.INPUT, (16, 3, 3, 3), 27)
    assert roles["c2.weight"] == (Role.HIDDEN, (16, 16, 3, 3), 144)
    assert roles["c3.weight"] == (Role.HIDDEN, (16, 16, 3, 3), 144)
    assert roles["c2.bias"][0] is Role.VECTOR
    assert roles["out.weight"] == (Role.OUTPUT, (CLASSES, 16), 16)
    assert roles["out.bias"][0] is Role.FIXED
    x = randn(5, 3, 8, 8)
    out, taps = net.apply(member_weights(net), x, True)
    assert out.shape == (5, CLASSES)
    assert net.layers == ("c1", "c2", "c3")
    assert set(taps) == {f"{k}/{n}" for k in ("act", "preact") for n in net.layers}
    assert all(v.shape == (5, 16) for v in taps.values())


@pytest.mark.parametrize(
    ("options", "spatial"),
    [
        ({"downsample_layers": [1, 2], "downsample": "stride"}, 2),
        ({"downsample_layers": [2], "downsample": "avgpool"}, 4),
        ({"downsample_layers": [1, 3], "downsample": "maxpool", "bias": False}, 2),
        ({"activation": "tanh"}, 8),
    ],
)
def test_cnn_matches_hand_written_forward(options: dict[str, Any], spatial: int) -> None:
    """Logits = readout of the spatial mean of the last layer, recomputed with torch ops."""
    net = build("cnn", 8, **{"downsample_layers": [], **options})
    w = member_weights(net)
    x = randn(2, 3, 8, 8)
    down = options.get("downsample_layers", [])
    how = options.get("downsample", "stride")
    h = x
    for i in range(1, 4):
        stride = 2 if (how == "stride" and i in down) else 1
        h = F.conv2d(h, w[f"c{i}.weight"], w.get(f"c{i}.bias"), stride=stride, padding=1)
        h = torch.tanh(h) if options.get("activation") == "tanh" else torch.relu(h)
        if i in down and how == "avgpool":
            h = F.avg_pool2d(h, 2)
        if i in down and how == "maxpool":
            h = F.max_pool2d(h, 2)
    assert h.shape[-2:] == (spatial, spatial)
    expected = F.linear(h.mean(dim=(2, 3)), w["out.weight"], w.get("out.bias"))
    out, taps = net.apply(w, x, True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(taps["act/c3"], h.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


def test_cnn_option_errors() -> None:
    with pytest.raises(SpecError, match="downsample_layers must lie in 1..depth=3"):
        make_spec("cnn", [8], model_options={"downsample_layers": [4]})
    with pytest.raises(UserError, match=r"needs image inputs of shape \(C, H, W\)"):
        FAMILIES.get("cnn")(8, (10,), 2, FAMILIES.validate_options("cnn", {}))


@pytest.mark.quick
def test_resnet18_ln_is_resnet18() -> None:
    """Width 64 on 32×32×3 with 10 classes has exactly ResNet-18's 11,173,962 parameters
    (torchvision's CIFAR variant; each LayerNorm has as many gains and biases as the
    BatchNorm it replaces)."""
    net = FAMILIES.get("resnet18_ln")(
        64, (3, 32, 32), 10, FAMILIES.validate_options("resnet18_ln", {})
    )
    assert sum(math.prod(p.shape) for p in net.params) == 11_173_962
    roles = {p.name: p for p in net.params}
    assert roles["stem.conv.weight"].role is Role.INPUT
    assert roles["stem.conv.weight"].fan_in == 27
    assert roles["s4b2.conv2.weight"].shape == (512, 512, 3, 3)
    assert roles["s4b2.conv2.weight"].fan_in == 512 * 9
    assert roles["s2b1.short.weight"].shape == (128, 64, 1, 1)
    assert roles["s2b1.short.weight"].fan_in == 64
    assert "s1b1.short.weight" not in roles  # identity shortcut in stage 1
    assert roles["out.weight"].role is Role.OUTPUT and roles["out.weight"].fan_in == 512
    gains = [p for p in net.params if ".norm" in p.name or "shortnorm" in p.name]
    assert gains and all(p.role is Role.VECTOR for p in gains)
    assert {p.init for p in gains if p.name.endswith(".weight")} == {"ones"}
    assert {p.init for p in gains if p.name.endswith(".bias")} == {"zeros"}
    hidden = [p for p in net.params if p.role is Role.HIDDEN]
    assert len(hidden) == 16 + 3  # 16 block convs + 3 shortcut convs
    assert net.layers == ("stem", *(f"s{s}b{b}" for s in range(1, 5) for b in (1, 2)))


@pytest.mark.parametrize("norm", ["channel", "chw"])
def test_resnet_layer_norm_never_mixes_examples(norm: str) -> None:
    """Train = test: an example's logits do not depend on the rest of the batch."""
    net = build("resnet18_ln", 4, norm=norm)
    w = member_weights(net)
    x = randn(6, 3, 8, 8)
    out, taps = net.apply(w, x, True)
    assert out.shape == (6, CLASSES)
    alone = torch.cat([net.apply(w, x[i : i + 1], False)[0] for i in range(6)])
    torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)
    widths = {"stem": 4, "s1b2": 4, "s2b1": 8, "s3b2": 16, "s4b2": 32}
    # the normalization itself, against torch's layer_norm / group_norm (one group)
    h, g, b = randn(2, 6, 5, 5), randn(6, seed=1), randn(6, seed=2)
    if norm == "channel":
        ref = F.layer_norm(h.permute(0, 2, 3, 1), (6,), g, b, EPS).permute(0, 3, 1, 2)
    else:
        ref = F.group_norm(h, 1, g, b, EPS)
    torch.testing.assert_close(layer_norm(h, g, b, norm), ref, rtol=1e-5, atol=1e-6)
    for layer, c in widths.items():
        assert taps[f"act/{layer}"].shape == (6, c)
        assert taps[f"preact/{layer}"].shape == (6, c)


@pytest.mark.quick
def test_transformer_roles_shapes_and_taps() -> None:
    net = build("transformer", 16)
    p = {s.name: s for s in net.params}
    assert (p["embed.weight"].role, p["embed.weight"].shape, p["embed.weight"].fan_in) == (
        Role.INPUT,
        (VOCAB, 16),
        1,
    )
    assert (p["pos.weight"].role, p["pos.weight"].shape) == (Role.INPUT, (SEQ, 16))
    assert p["b1.attn.query.weight"].tags == frozenset({"query", "branch"})
    assert p["b1.attn.key.weight"].tags == frozenset({"branch"})
    assert p["b2.ff2.weight"].tags == frozenset({"branch", "branch_out"})  # depth-muP's
    assert p["b1.attn.proj.weight"].tags == frozenset({"branch", "branch_out"})
    assert p["embed.weight"].tags == frozenset({"embedding"}) and not p["ln_f.weight"].tags
    assert "b1.attn.key.bias" not in p and "b1.attn.value.bias" in p
    assert (p["b2.ff1.weight"].shape, p["b2.ff1.weight"].fan_in) == ((64, 16), 16)
    assert (p["b2.ff2.weight"].shape, p["b2.ff2.weight"].fan_in) == ((16, 64), 64)
    assert p["b1.ln1.weight"].init == "ones" and p["ln_f.bias"].init == "zeros"
    assert p["out.weight"].role is Role.OUTPUT and p["out.bias"].role is Role.FIXED
    x = tokens(5)
    out, taps = net.apply(member_weights(net), x, True)
    assert out.shape == (5, SEQ, VOCAB)
    assert net.layers == ("b1", "b2")
    for b in net.layers:
        assert taps[f"act/{b}"].shape == (5, 16)
        assert taps[f"preact/{b}"].shape == (5, 64)
        assert taps[f"attn/{b}"].shape == (5, 2, SEQ, SEQ)
    # float token ids (as a float probe set carries them) give the same logits
    torch.testing.assert_close(net.apply(member_weights(net), x.float(), False)[0], out)
    # sinusoidal positions: no pos.weight, same shapes
    sin = build("transformer", 16, positions="sinusoidal", bias=False)
    assert "pos.weight" not in {s.name for s in sin.params}
    assert not any(
        s.name.endswith(".bias") and s.role is Role.VECTOR and "ln" not in s.name
        for s in sin.params
    )
    assert sin.apply(member_weights(sin), x, False)[0].shape == (5, SEQ, VOCAB)


def test_transformer_heads_must_divide_width() -> None:
    with pytest.raises(
        UserError, match=r"model\.options\.heads: width 18 is not divisible by heads=4"
    ):
        build("transformer", 18, heads=4)
    with pytest.raises(UserError, match=r"token sequences of shape \(T,\)"):
        FAMILIES.get("transformer")(8, (3, 8, 8), 4, TransformerOptions(heads=2))


# -- transformer attention ----------------------------------------------------------------
def attention_by_hand(
    w: dict[str, torch.Tensor], x: torch.Tensor, heads: int, scale: float, causal: bool
) -> torch.Tensor:
    """Block 1's attention probabilities with torch.softmax: (B, H, T, T)."""
    ln = F.layer_norm
    h = w["embed.weight"][x] + w["pos.weight"][: x.shape[1]]
    a = ln(h, (h.shape[-1],), w["b1.ln1.weight"], w["b1.ln1.bias"], 1e-5)
    b, t, n = a.shape
    q = (a @ w["b1.attn.query.weight"].T + w["b1.attn.query.bias"]).reshape(b, t, heads, -1)
    k = (a @ w["b1.attn.key.weight"].T).reshape(b, t, heads, -1)  # the key has no bias
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if causal:
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_scale_is_one_over_d_head_under_mup(causal: bool) -> None:
    width, heads = 32, 2
    d_head = width // heads
    x = tokens(4)
    for param, scale in [
        ("mup", 1 / d_head),
        ("mf", 1 / d_head),
        ("sp", d_head**-0.5),
        ("ntp", d_head**-0.5),
    ]:
        net = build("transformer", width, param, causal=causal)
        w = member_weights(net)
        # a nonzero query bias too, so that the check sees every term
        w = {**w, "b1.attn.query.bias": 0.3 * randn(width, seed=3)}
        _, taps = net.apply(w, x, True)
        expected = attention_by_hand(w, x, heads, scale, causal)
        torch.testing.assert_close(taps["attn/b1"], expected, rtol=1e-5, atol=1e-6, msg=param)
        other = attention_by_hand(
            w, x, heads, d_head**-0.5 if scale == 1 / d_head else 1 / d_head, causal
        )
        assert (taps["attn/b1"] - other).abs().max() > 1e-3, param  # the scale matters here
    # explicit choices win over auto; attn_mult multiplies the scores
    net = build("transformer", width, "mup", causal=causal, attn_scale="sqrt", attn_mult=2.0)
    w = member_weights(net)
    torch.testing.assert_close(
        net.apply(w, x, True)[1]["attn/b1"],
        attention_by_hand(w, x, heads, 2.0 * d_head**-0.5, causal),
        rtol=1e-5,
        atol=1e-6,
    )
    # a caller that does not name the parameterization gets the muP scale
    plain = build_transformer(width, (SEQ,), VOCAB, TransformerOptions(heads=heads, causal=causal))
    torch.testing.assert_close(
        plain.apply(w, x, True)[1]["attn/b1"], attention_by_hand(w, x, heads, 1 / d_head, causal)
    )


def test_trainer_gives_mup_transformer_one_over_d_head() -> None:
    trainer = make_trainer(make_spec("transformer", [32], seeds=[0]), 32)
    w = trainer.ensemble.effective({k: v[0].detach() for k, v in trainer.params.items()})
    x = tokens(3)
    _, taps = trainer.network.apply(w, x, True)
    torch.testing.assert_close(taps["attn/b1"], attention_by_hand(w, x, 2, 1 / 16, True))


def test_trainer_gives_sp_transformer_one_over_sqrt_d_head() -> None:
    trainer = make_trainer(make_spec("transformer", [32], seeds=[0], param="sp"), 32)
    w = trainer.ensemble.effective({k: v[0].detach() for k, v in trainer.params.items()})
    x = tokens(3)
    _, taps = trainer.network.apply(w, x, True)
    torch.testing.assert_close(taps["attn/b1"], attention_by_hand(w, x, 2, 16**-0.5, True))


def test_network_rules_reach_only_families_that_declare_them() -> None:
    """The transformer declares the trait ``network_rules``; any exponent the
    parameterization gives sets its scale. Families without the trait are called with
    their four arguments, whatever the rules."""
    assert FAMILIES.entry("transformer").traits.get("network_rules") is True
    assert not FAMILIES.entry("mlp").traits.get("network_rules")
    width, d_head = 32, 16
    base, data = FAMILY_SETUP["transformer"]
    opts = FAMILIES.validate_options("transformer", base)
    net = build_network("transformer", width, (SEQ,), VOCAB, opts, network_rules=NetworkRules(0.75))
    w = member_weights(net)
    x = tokens(2)
    torch.testing.assert_close(
        net.apply(w, x, True)[1]["attn/b1"], attention_by_hand(w, x, 2, d_head**-0.75, True)
    )
    mlp = build_network(
        "mlp", 16, (5,), 3, FAMILIES.validate_options("mlp", {}), network_rules=NetworkRules(0.5)
    )
    assert mlp.family == "mlp"


@pytest.mark.quick
def test_stackable_is_a_capability_the_network_declares() -> None:
    """Only the MLP runs on stacked weights; ``auto`` takes vmap for any stackable
    network on a CPU, whatever its family's name."""
    mlp = build_network("mlp", 16, (5,), 3, FAMILIES.validate_options("mlp", {}))
    assert mlp.stackable
    assert not any(build(f, 16).stackable for f in FAMILY_NAMES)
    assert choose_strategy("auto", 64, CPU, stackable=True) == "vmap"
    assert choose_strategy("auto", 64, CPU, stackable=False) == "loop"
    renamed = dataclasses.replace(mlp, family="my_mlp")  # a plug-in that declares it
    rules = rules_for("mup", list(mlp.params), RuleContext(16, 8, "sgd"))
    ens = Ensemble(renamed, rules, [0, 1], loss="cross_entropy", device=CPU)
    assert ens.strategy == "vmap"
    plain = Ensemble(mlp, rules, [0, 1], loss="cross_entropy", device=CPU, strategy="loop")
    params = ens.init_params()
    x = randn(4, 5)
    with torch.no_grad():
        torch.testing.assert_close(ens.forward(params, x), plain.forward(params, x))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_taps_are_probabilities(causal: bool) -> None:
    net = build("transformer", 16, causal=causal)
    _, taps = net.apply(member_weights(net), tokens(6), True)
    for b in net.layers:
        a = taps[f"attn/{b}"]
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(6, 2, SEQ), rtol=0, atol=1e-6)
        future = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)
        if causal:
            assert (a[..., future] == 0).all()
        else:
            assert (a[..., future] > 0).all()


def test_query_zero_init_gives_uniform_attention_at_init() -> None:
    spec = make_spec(
        "transformer", [32], seeds=[0, 1], param={"name": "mup", "query_zero_init": True}
    )
    trainer = make_trainer(spec, 32)
    assert (trainer.params["b1.attn.query.weight"] == 0).all()
    assert (trainer.params["b1.attn.key.weight"] != 0).any()
    _, taps = trainer.ensemble.forward_taps(trainer.params, tokens(3))
    rows = torch.arange(1, SEQ + 1, dtype=torch.float32)[:, None]  # causal: 1/(t+1) on s ≤ t
    uniform = torch.where(torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1), 0.0, 1 / rows)
    torch.testing.assert_close(taps["attn/b1"], uniform.expand_as(taps["attn/b1"]))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.quick
def test_causal_mask_prevents_looking_ahead(causal: bool) -> None:
    net = build("transformer", 16, causal=causal, depth=2)
    w = member_weights(net)
    x = tokens(4)
    j = 5
    changed = x.clone()
    changed[:, j] = (changed[:, j] + 3) % VOCAB
    a, _ = net.apply(w, x, False)
    b, _ = net.apply(w, changed, False)
    diff = (a - b).abs().amax(dim=(0, 2))  # per position
    assert (diff[j:] > 1e-3).all(), diff  # the changed position and later ones see it
    if causal:
        torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-6)
    else:
        assert (diff[:j] > 1e-3).all(), diff  # bidirectional: every position sees it


# -- mup oracle: learning-rate and weight-decay scales from shapes -----------------------
class ShapeModel(nn.Module):
    """A module holding zero tensors of a Network's shapes, for mup.set_base_shapes."""

    def __init__(self, net: Network) -> None:
        super().__init__()
        for p in net.params:
            self.register_parameter(p.name.replace(".", "__"), nn.Parameter(torch.zeros(p.shape)))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lr_and_wd_scales_equal_mup_package(family: str, opt: str) -> None:
    """mup infers from base and delta shapes which dims are width: its MuSGD/MuAdam groups
    must give every tensor the lr and weight decay that the tensor's role gives."""
    base = 4 if family == "resnet18_ln" else 8
    width = 4 * base
    model, base_model, delta = (ShapeModel(build(family, w)) for w in (width, base, 2 * base))
    mup.set_base_shapes(model, base_model, delta=delta)
    cls = mup.MuSGD if opt == "sgd" else mup.MuAdam
    optim = cls(model.parameters(), lr=0.5, weight_decay=0.25)
    names = {id(p): k.replace("__", ".") for k, p in model.named_parameters()}
    theirs = {
        names[id(p)]: (g["lr"], g["weight_decay"]) for g in optim.param_groups for p in g["params"]
    }
    net = build(family, width)
    rules = rules_for("mup", list(net.params), RuleContext(width, base, optimizer=opt))
    ours = {k: (0.5 * r.lr_scale, 0.25 * r.wd_scale) for k, r in rules.items()}
    assert set(ours) == set(theirs)
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], rel=1e-12), k
    assert len({v for v in ours.values()}) >= 2  # the check separates roles


# -- training under every parameterization ----------------------------------------------
PARAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (parameterization, optimizer)
    "sp": ({"name": "sp"}, {"name": "adam", "lr": 3e-3}),
    "ntp": ({"name": "ntp"}, {"name": "adam", "lr": 3e-3}),
    "mup": ({"name": "mup"}, {"name": "adam", "lr": 1e-2}),
    "mf": ({"name": "mf", "gamma0": 1.0}, {"name": "sgd", "momentum": 0.9}),  # lr: MF_LR
}
# mean field's η0 per family (SGD; measured: last 3 losses / first 2 ≤ 0.94 over data seeds 0-2)
MF_LR = {"cnn": 0.5, "resnet18_ln": 0.2, "transformer": 0.3}
TRAIN_WIDTHS = {"cnn": [8, 32], "resnet18_ln": [4, 8], "transformer": [16, 32]}


@pytest.mark.parametrize("param", list(PARAMS))
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_trains_under_each_parameterization(family: str, param: str) -> None:
    p, opt = PARAMS[param]
    if param == "mf":
        opt = {**opt, "lr": MF_LR[family]}
    widths = TRAIN_WIDTHS[family]
    spec = make_spec(family, widths, param=p, optimizer=opt, seeds=2, batch_size=16)
    for width in widths:
        trainer = make_trainer(spec, width)
        losses = torch.stack([trainer.train_step() for _ in range(12)])  # (step, seed)
        assert torch.isfinite(losses).all(), (width, losses)
        assert trainer.alive.all()
        first, last = losses[:2].mean(), losses[-3:].mean()
        assert last < 0.95 * first, (width, losses.mean(1))


def test_masked_lm_trains() -> None:
    spec = make_spec(
        "transformer",
        [16],
        model_options={"causal": False},
        data={"options": {"masked": True}},
        batch_size=16,
    )
    trainer = make_trainer(spec, 16)
    losses = torch.stack([trainer.train_step() for _ in range(12)])
    assert torch.isfinite(losses).all()
    assert losses[-3:].mean() < 0.95 * losses[:2].mean(), losses.mean(1)


# -- vectorized ensemble = loop of independent models ------------------------------------
EQ_WIDTH = {"cnn": 8, "resnet18_ln": 4, "transformer": 16}
# float64, so that a real difference cannot hide in float32 rounding (batched and
# grouped convolutions round differently from per-member ones)
RTOL, ATOL = 1e-9, 1e-11


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_vectorized_ensemble_equals_loop_and_single_models(family: str) -> None:
    """vmap over seeds = a loop over members = separate single-seed trainers (4 SGD steps)."""
    width, seeds, steps = EQ_WIDTH[family], [0, 5, 7], 4
    opt = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}

    def run(seed_list: list[int], strategy: str) -> tuple[torch.Tensor, dict, dict]:
        spec = make_spec(
            family,
            [width],
            seeds=seed_list,
            strategy=strategy,
            optimizer=opt,
            base_width=4,
            dtype="float64",
        )
        trainer = make_trainer(spec, width)
        assert trainer.ensemble.strategy == strategy
        start = {k: v.detach().clone() for k, v in trainer.params.items()}
        losses = torch.stack([trainer.train_step() for _ in range(steps)])  # (step, seed)
        return losses, start, {k: v.detach() for k, v in trainer.params.items()}

    vl, start, vp = run(seeds, "vmap")
    ll, _, lp = run(seeds, "loop")
    torch.testing.assert_close(vl, ll, rtol=RTOL, atol=ATOL)
    for k in vp:
        torch.testing.assert_close(vp[k], lp[k], rtol=RTOL, atol=ATOL, msg=k)
    for i, s in enumerate(seeds):
        sl, _, sp_ = run([s], "vmap")
        torch.testing.assert_close(sl[:, 0], vl[:, i], rtol=RTOL, atol=ATOL)
        for k in vp:
            torch.testing.assert_close(sp_[k][0], vp[k][i], rtol=RTOL, atol=ATOL, msg=k)
    # the check has teeth: members differ, and every tensor moved far beyond the tolerance
    assert (vl[:, 0] - vl[:, 1]).abs().max() > 1e-3
    still = [k for k in vp if (vp[k] - start[k]).abs().max() < 1e-4]
    assert not still, still


# -- coordinate check ---------------------------------------------------------------------
COORD: dict[str, dict[str, Any]] = {
    "cnn": {
        "widths": [64, 128, 256, 512],
        "lr": 3e-3,
        "data": {"options": {"size": 4}},
        "model_options": {"downsample_layers": []},
    },
    "resnet18_ln": {"widths": [4, 8, 16, 32], "lr": 3e-3, "data": {}},
    "transformer": {"widths": [32, 64, 128, 256], "lr": 1e-2, "data": {}},
}


def run_coord_check(
    family: str, param: dict[str, Any], seeds: int = 4, widths: list[int] | None = None
) -> Any:
    c = COORD[family]
    spec = make_spec(
        family,
        widths or c["widths"],
        param=param,
        optimizer={"name": "adam", "lr": c["lr"]},
        seeds=seeds,
        batch_size=8,
        data=c["data"],
        model_options=c.get("model_options"),
        steps=3,
    )
    return coord_check(spec, steps=3, points=64)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_mup_coord_check_flat_in_width(family: str) -> None:
    cc = run_coord_check(family, {"name": "mup", "readout_zero_init": True})
    acts = [str(v).removeprefix("act/") for v in cc.layer.values if str(v).startswith("act/")]
    assert acts == list(build(family, 8).layers) and cc.layer.values[-1] == "output"
    cc = cc.mean("seed")
    final = cc.sel(step=3)
    ratios = {
        str(layer): float(final.sel(layer=layer).max() / final.sel(layer=layer).min())
        for layer in cc.layer.values
    }
    assert np.isfinite(cc.values).all()
    assert (cc.sel(layer="output", step=0) == 0).all()  # zero readout at init
    assert (cc.sel(layer="output", step=3) > 0).all()  # and it trained
    hidden = {k: v for k, v in ratios.items() if k != "output"}
    assert max(hidden.values()) < 1.3, ratios
    assert ratios["output"] < 1.5, ratios


def test_sp_coord_check_grows_with_width() -> None:
    """The check has teeth: the same transformer run in sp blows up with width."""
    cc = run_coord_check("transformer", {"name": "sp"})
    final = cc.sel(step=3).mean("seed")
    for layer in ("act/b1", "act/b2"):
        v = final.sel(layer=layer).values
        assert (np.diff(v) > 0).all(), (layer, v)
        assert v[-1] / v[0] > 2.0, (layer, v)


# -- end to end ---------------------------------------------------------------------------
def test_transformer_study_end_to_end(tmp_path) -> None:
    raw = tiny_spec_dict(
        tmp_path / "study",
        model={"family": "transformer", "options": {"heads": 2, "depth": 1}},
        data={"stream": "fam_tokens", "seed": 0, "probe_points": 8},
        widths=[8, 16],
        steps=4,
        probes={
            "train_loss": {"every": 1},
            "test": {"at": ["end"]},
            "attention": {"at": ["init", "end"], "points": 2},
            "kernels": {"at": ["end"], "points": 4},
        },
    )
    out = widthwise.run(widthwise.load_spec(write_spec(tmp_path / "s.yaml", raw)))
    ds = widthwise.open_study(out)
    assert ds["test_logits"].sizes["position"] == SEQ
    assert ds["test_logits"].sizes["output"] == VOCAB
    a = ds["attention"]
    assert a.sizes["query"] == SEQ and a.sizes["head"] == 2
    np.testing.assert_allclose(a.sum("key"), 1.0, atol=1e-6)
    assert np.isfinite(ds["train_loss"].values).all()


def test_coord_check_verdict_flat_under_mup_not_under_sp() -> None:
    """The verdict (slope interval within ±0.1) on the transformer (the MLP:
    tests/test_coord_check.py), widths 64-512, 8 seeds. Measured: mup slopes -0.06 to
    0.0 (output -0.057 [-0.088, -0.027]), sp +0.56 to +1.46. At widths 32-256 the mup
    readout's slope is -0.093 [-0.12, -0.06]: undetermined, a finite-width effect."""
    from widthwise.analysis.coordinates import coord_slopes

    widths = [64, 128, 256, 512]
    mup_param = {"name": "mup", "readout_zero_init": True}
    mup = coord_slopes(run_coord_check("transformer", mup_param, 8, widths))
    sp = coord_slopes(run_coord_check("transformer", {"name": "sp"}, 8, widths))
    assert (mup.verdict == "flat").all()
    assert (sp.verdict == "grows").all()
