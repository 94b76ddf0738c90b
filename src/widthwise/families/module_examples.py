"""Bundled module-family example: the nanoGPT-style GPT of ``examples/nanogpt.py``.

The same code as ``examples/nanogpt.py`` (kept inside the package so the bundled
spec ``module_nanogpt`` needs no import of user code); see that file.

A nanoGPT-style GPT (karpathy/nanoGPT's ``model.py``, trimmed) as a widthwise family.

A plain ``nn.Module``, written as a user would; the only widthwise-specific line is
the attention scale, ``widthwise.attention_scale(head_size)``: 1/head_size under
mup, 1/√head_size under sp (and when the module runs on its own). Width is
``n_embd``; the number of heads is fixed, so the head size grows with width.
Weight tying as nanoGPT (``lm_head.weight = wte.weight``) is on by default.

    model: {family: module, options: {factory: "widthwise.families.module_examples:make_gpt"}}
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import widthwise


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        assert n_embd % n_head == 0
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.softmax = nn.Softmax(dim=-1)  # a module, so its output can be tapped
        self.n_head, self.n_embd = n_head, n_embd
        mask = torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)
        self.register_buffer("bias", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        # written out, not F.scaled_dot_product_attention: Hessian probes need a double
        # backward, which fused attention kernels lack
        att = (q @ k.transpose(-2, -1)) * widthwise.attention_scale(hs)  # (B, nh, T, T)
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.softmax(att)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(
        self, vocab_size: int, block_size: int, n_embd: int, n_layer: int, n_head: int, tie: bool
    ) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab_size, n_embd),
                "wpe": nn.Embedding(block_size, n_embd),
                "h": nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer)),
                "ln_f": nn.LayerNorm(n_embd),
            }
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying, as nanoGPT
        for name, p in self.named_parameters():  # nanoGPT's init (widthwise draws its own)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)


def make_gpt(
    width: int,
    in_shape: tuple[int, ...],
    out_dim: int,
    depth: int = 2,
    heads: int = 4,
    tie: bool = True,
) -> GPT:
    """The family: ``n_embd = width``, vocabulary = the stream's ``out_dim``, block size =
    its sequence length."""
    return GPT(out_dim, in_shape[0], width, depth, heads, tie)
