"""Factories for the module-family tests (imported by spec as ``module_factories:...``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """Depth-3 ReLU MLP; ``readout`` is the last layer's class (nn.Linear or mup's)."""

    def __init__(self, width: int, d_in: int, out: int, bias: bool, readout: type = nn.Linear):
        super().__init__()
        self.l1 = nn.Linear(d_in, width, bias=bias)
        self.l2 = nn.Linear(width, width, bias=bias)
        self.out = readout(width, out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.l2(F.relu(self.l1(x)))))


def make_mlp(width: int, in_shape: tuple[int, ...], out_dim: int, bias: bool = False) -> MLP:
    return MLP(width, in_shape[0], out_dim, bias)


class TiedLM(nn.Module):
    """Embedding -> LayerNorm -> Linear -> GELU -> readout tied to the embedding."""

    def __init__(self, width: int, vocab: int, shared_readout: type | None = None) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.ln = nn.LayerNorm(width)
        self.hidden = nn.Linear(width, width)
        if shared_readout is None:
            self.head = nn.Linear(width, vocab, bias=False)
            self.head.weight = self.emb.weight
        else:  # mup.MuSharedReadout
            self.head = shared_readout(self.emb.weight, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx)  # (B, T, w)
        h = h + F.gelu(self.hidden(self.ln(h)))
        return self.head(h)  # (B, T, vocab)


def make_tied(width: int, out_dim: int) -> TiedLM:
    return TiedLM(width, out_dim)


class SmallCNN(nn.Module):
    """Conv -> depthwise conv -> conv -> pool -> linear readout."""

    def __init__(self, width: int, channels: int, classes: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, width, 3, padding=1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.c2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.norm = nn.GroupNorm(1, 2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.dw(F.relu(self.c1(x))))
        h = self.norm(F.relu(self.c2(h)))
        return self.fc(h.mean(dim=(2, 3)))


def make_cnn(width: int, in_shape: tuple[int, ...], out_dim: int) -> SmallCNN:
    return SmallCNN(width, in_shape[0], out_dim)


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``: a linear layer with its weight stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], self.nf
        )


class HFStyle(nn.Module):
    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.inp = Conv1D(width, d_in)  # weight (d_in, width): fan-out is dim 1
        self.mid = Conv1D(3 * width, width)
        self.out = Conv1D(out, 3 * width)  # weight (3w, out): the readout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.mid(F.gelu(self.inp(x)))))


def make_hf_style(width: int, in_shape: tuple[int, ...], out_dim: int) -> HFStyle:
    return HFStyle(width, in_shape[0], out_dim)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.func.vmap cannot run it."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        if h.sum() > 0:  # a Python branch on a value
            h = F.relu(h)
        return self.out(h)


def make_branchy(width: int, in_shape: tuple[int, ...], out_dim: int) -> Branchy:
    return Branchy(width, in_shape[0], out_dim)


class RawPositions(nn.Module):
    """A raw (T, width) parameter: its role is ambiguous without an override."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(d_in, width))
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x @ self.pos)


def make_raw(width: int, in_shape: tuple[int, ...], out_dim: int) -> RawPositions:
    return RawPositions(width, in_shape[0], out_dim)


# -- bad factories -------------------------------------------------------------------

NOT_CALLABLE = 3


def raises(width: int) -> nn.Module:
    raise ValueError(f"no model for width {width}")


def not_a_module(width: int) -> dict:
    return {"width": width}


def fixed_size(width: int, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return nn.Linear(in_shape[0], out_dim)


def make_gpt2(
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    tie: bool = True,
    pdrop: float = 0.0,
    attn_pdrop: float = 0.0,
) -> nn.Module:
    """Hugging Face GPT-2 built from a config (no download); width = n_embd, 4 heads.
    ``pdrop``: its residual and embedding dropout (nn.Dropout modules)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=out_dim,
        n_positions=in_shape[0],
        n_embd=width,
        n_layer=2,
        n_head=4,
        resid_pdrop=pdrop,
        embd_pdrop=pdrop,
        attn_pdrop=attn_pdrop,
        tie_word_embeddings=tie,
    )
    return GPT2LMHeadModel(config)


class Squares(nn.Module):
    """A (width, width²) tensor: its dims scale by different ratios."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l0 = nn.Linear(d_in, width)
        self.l1 = nn.Linear(width, width * width)
        self.out = nn.Linear(width * width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.l1(self.l0(x)))


def make_squares(width: int, in_shape: tuple[int, ...], out_dim: int) -> Squares:
    return Squares(width, in_shape[0], out_dim)


class WrongUnderVmap(nn.Module):
    """Silently different when vectorized (stands in for tied-weight recipes gone wrong)."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        if torch._C._functorch.is_batchedtensor(self.l1.weight):
            h = h + 1.0  # what the per-member forward does not do
        return self.out(h)


def make_wrong_under_vmap(width: int, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return WrongUnderVmap(width, in_shape[0], out_dim)


class Counter(nn.Module):
    """Updates a buffer in place during forward (a running statistic)."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.out = nn.Linear(width, out)
        self.register_buffer("running", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        with torch.no_grad():
            self.running.mul_(0.9).add_(0.1 * h.mean(0))
        return self.out(h)


def make_counter(width: int, in_shape: tuple[int, ...], out_dim: int) -> Counter:
    return Counter(width, in_shape[0], out_dim)


# -- dropout ---------------------------------------------------------------------------


class DropMLP(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> readout."""

    def __init__(self, width: int, d_in: int, out: int, p: float) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.drop1 = nn.Dropout(p)
        self.l2 = nn.Linear(width, width)
        self.drop2 = nn.Dropout(p)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop1(F.relu(self.l1(x)))
        return self.out(self.drop2(F.relu(self.l2(h))))


def make_drop_mlp(width: int, in_shape: tuple[int, ...], out_dim: int, p: float = 0.3) -> DropMLP:
    return DropMLP(width, in_shape[0], out_dim, p)


class DropCNN(nn.Module):
    """Conv -> ReLU -> Dropout2d (whole channels) -> conv -> pool -> Dropout -> readout."""

    def __init__(self, width: int, channels: int, classes: int, p: float) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, width, 3, padding=1)
        self.drop2d = nn.Dropout2d(p)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop2d(F.relu(self.c1(x)))
        h = F.relu(self.c2(h)).mean(dim=(2, 3))
        return self.fc(self.drop(h))


def make_drop_cnn(width: int, in_shape: tuple[int, ...], out_dim: int, p: float = 0.25) -> DropCNN:
    return DropCNN(width, in_shape[0], out_dim, p)


class FunctionalDropout(nn.Module):
    """F.dropout(training=self.training) in forward: torch's global generator."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.dropout(F.relu(self.l1(x)), 0.2, training=self.training))


def make_functional_dropout(width: int, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return FunctionalDropout(width, in_shape[0], out_dim)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin(h), p=0.1, training=self.training)


class NestedFunctionalDropout(nn.Module):
    """The functional dropout inside a submodule: the refusal names it."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.block = Block(width)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(F.relu(self.l1(x))))


def make_nested_functional_dropout(
    width: int, in_shape: tuple[int, ...], out_dim: int
) -> nn.Module:
    return NestedFunctionalDropout(width, in_shape[0], out_dim)


class AttentionDropout(nn.Module):
    """F.scaled_dot_product_attention(dropout_p=0.1) while training."""

    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.emb(idx)).chunk(3, dim=-1)
        p = 0.1 if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.head(o)


def make_attention_dropout(width: int, out_dim: int) -> nn.Module:
    return AttentionDropout(width, out_dim)


class AlphaDrop(nn.Module):
    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.alpha = nn.AlphaDropout(0.1)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.alpha(F.selu(self.l1(x))))


def make_alpha_dropout(width: int, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return AlphaDrop(width, in_shape[0], out_dim)


class Noisy(nn.Module):
    """Gaussian noise from torch's global generator in forward."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        return self.out(h + 0.1 * torch.randn_like(h))


def make_noisy(width: int, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return Noisy(width, in_shape[0], out_dim)


class MHADropout(nn.Module):
    """nn.MultiheadAttention(dropout=0.1): its attention dropout uses the global generator."""

    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.attn = nn.MultiheadAttention(width, 2, dropout=0.1, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx)
        return self.head(self.attn(h, h, h, need_weights=False)[0])


def make_mha_dropout(width: int, out_dim: int) -> nn.Module:
    return MHADropout(width, out_dim)


class BatchNormed(nn.Module):
    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.bn = nn.BatchNorm1d(width)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.l1(x)))


def make_batchnorm(width: int, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return BatchNormed(width, in_shape[0], out_dim)


# -- BatchNorm: per-member running statistics ------------------------------------------------


class BNMLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU, twice, then a linear readout."""

    def __init__(self, width: int, d_in: int, out: int, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width, bias=False)
        self.bn1 = nn.BatchNorm1d(width, momentum=momentum)
        self.l2 = nn.Linear(width, width, bias=False)
        self.bn2 = nn.BatchNorm1d(width, momentum=momentum)
        self.out = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.l1(x)))
        return self.out(F.relu(self.bn2(self.l2(h))))


def make_bn_mlp(
    width: int, in_shape: tuple[int, ...], out_dim: int, momentum: float | None = 0.1
) -> BNMLP:
    return BNMLP(width, in_shape[0], out_dim, momentum)


class BNCNN(nn.Module):
    """Conv -> BatchNorm2d -> ReLU -> strided conv -> BatchNorm2d -> ReLU -> pool -> linear."""

    def __init__(self, width: int, channels: int, classes: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.c1(x)))
        h = F.relu(self.bn2(self.c2(h)))
        return self.fc(h.mean(dim=(2, 3)))


def make_bn_cnn(width: int, in_shape: tuple[int, ...], out_dim: int) -> BNCNN:
    return BNCNN(width, in_shape[0], out_dim)


class Clamped(nn.Module):
    """A hidden size max(64, width): fixed from 32 to 64, growing after (a third width
    tells; two would call it a fixed tensor)."""

    def __init__(self, width: int, d_in: int, out: int) -> None:
        super().__init__()
        h = max(64, width)
        self.l1 = nn.Linear(d_in, width)
        self.l2 = nn.Linear(width, h)
        self.out = nn.Linear(h, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.l2(torch.relu(self.l1(x)))))


def make_clamped(width: int, in_shape: tuple[int, ...], out_dim: int) -> Clamped:
    return Clamped(width, in_shape[0], out_dim)
