"""Dropout in a module family: each member's own masks, drawn from (its seed, width, step).

A module family's dropout modules (``nn.Dropout``, ``nn.Dropout1d/2d/3d`` with p > 0)
are kept in eval mode, so torch's own dropout, which draws from the global random
generator, never runs; a forward hook multiplies their input by a mask instead, but
only during a training forward pass (:func:`training_forward`, entered by
:meth:`widthwise.ensemble.Ensemble.forward` when the trainer passes ``step=``). Every
other forward (test logits, kernels, sharpness, eNTK, the coordinate check's
measurements, ``load_member``) runs with dropout off, as a model in eval mode does.

The masks of member ``e`` at step ``t`` come from one ``torch.Generator`` seeded by
(member seed, width, t) (:func:`dropout_generator`), drawn in the order the dropout
modules run. They depend on nothing else: not on how many members train together,
on the vectorized or per-member forward, or on a resume from a checkpoint. Under
``torch.func.vmap`` (``randomness="same"``: a draw from an explicit generator is one
unbatched tensor) every member's mask is drawn for each dropout call, stacked
``(member, *shape)``, and each member picks its own row by its batched index
(:func:`member_index`); the per-member loop draws only its own: the same values.

A mask keeps an element with probability 1 − p and scales the kept ones by 1/(1 − p)
(torch's convention); ``Dropout1d/2d/3d`` drop whole channels, as
``F.dropout1d/2d/3d`` do (a mask of shape ``(N, C, 1, ..., 1)``, ``(C, 1, ...)``
without a batch dim).

Dropout that would draw from torch's global generator (``F.dropout(...,
training=True)`` in a forward, ``F.scaled_dot_product_attention(dropout_p > 0)``,
``nn.MultiheadAttention(dropout > 0)``, any other random op) cannot be given per-member
masks: building the family refuses it with one line (:class:`FindRandomDropout`,
:func:`check_dropout`), and so are the alpha dropouts.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from widthwise.errors import UserError

__all__ = [
    "DROPOUT_MODULES",
    "FindRandomDropout",
    "check_dropout",
    "dropout_generator",
    "in_training_forward",
    "install_dropout",
    "member_index",
    "training_forward",
]

DROPOUT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
"""Dropout modules a module family supports (the alpha dropouts are refused)."""

_ALPHA = (nn.AlphaDropout, nn.FeatureAlphaDropout)


@dataclass
class _Training:
    """One training forward pass: its step, the members' seeds and the width."""

    step: int
    seeds: tuple[int, ...]
    width: int
    generators: dict[tuple[int, str], torch.Generator] = field(default_factory=dict)


_TRAINING: contextvars.ContextVar[_Training | None] = contextvars.ContextVar(
    "widthwise_training_forward", default=None
)
_MEMBER: contextvars.ContextVar[int | Tensor | None] = contextvars.ContextVar(
    "widthwise_member_index", default=None
)


def dropout_generator(
    seed: int, width: int, step: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of member seed ``seed``'s dropout masks at ``width`` and ``step``
    (on ``device``: the CPU's for CPU tensors, the GPU's Philox for CUDA tensors)."""
    state = np.random.SeedSequence([seed, width, step, 0xD209]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


@contextlib.contextmanager
def training_forward(step: int, seeds: Sequence[int], width: int) -> Iterator[None]:
    """Within the block module families' dropout is on, with step ``step``'s masks
    (every block starts the members' generators afresh: the same masks again), and
    modules holding per-member buffers (BatchNorm) run in train mode."""
    token = _TRAINING.set(_Training(int(step), tuple(int(s) for s in seeds), int(width)))
    try:
        yield
    finally:
        _TRAINING.reset(token)


def in_training_forward() -> bool:
    """Whether a training forward pass (:func:`training_forward`) is running: dropout on,
    and a module family's stateful modules (BatchNorm) in train mode."""
    return _TRAINING.get() is not None


@contextlib.contextmanager
def member_index(index: int | Tensor) -> Iterator[None]:
    """Within the block the forward is member ``index``'s (an int in the per-member
    loop; under ``torch.func.vmap`` the batched index, one per member)."""
    token = _MEMBER.set(index)
    try:
        yield
    finally:
        _MEMBER.reset(token)


def _mask_device(t: Tensor) -> torch.device:
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def _generator(state: _Training, e: int, device: torch.device) -> torch.Generator:
    key = (e, str(device))
    gen = state.generators.get(key)
    if gen is None:
        gen = dropout_generator(state.seeds[e], state.width, state.step, device)
        state.generators[key] = gen
    return gen


def _mask(
    gen: torch.Generator, shape: tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A keep-mask of ``shape``: 1/(1 − p) with probability 1 − p, else 0."""
    u = torch.rand(shape, generator=gen, device=device)  # float32 draws: dtype-independent
    if p >= 1.0:
        return torch.zeros(shape, dtype=dtype, device=device)
    return (u >= p).to(dtype) * (1.0 / (1.0 - p))


def mask_shape(mod: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of ``mod``'s mask for an input of ``shape`` (channels as torch drops them)."""
    unbatched = {nn.Dropout1d: 2, nn.Dropout3d: 4}
    if isinstance(mod, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        if len(shape) == unbatched.get(type(mod), -1):  # (C, ...): no batch dim
            return (shape[0], *([1] * (len(shape) - 1)))
        if len(shape) >= 2:
            return (*shape[:2], *([1] * (len(shape) - 2)))
    return shape


def _dropout_hook(mod: nn.Module) -> Callable[..., Any]:
    """A forward hook for dropout module ``mod`` (kept in eval mode: its output is its
    input): during a training forward, the input times the member's mask."""

    def hook(_mod: nn.Module, args: Any, kwargs: Any, out: Any) -> Any:
        state = _TRAINING.get()
        p = float(mod.p)  # type: ignore[arg-type]
        x = args[0] if args else kwargs.get("input")
        if state is None or p <= 0.0 or not isinstance(x, Tensor):
            return None
        index = _MEMBER.get()
        if index is None:
            raise RuntimeError("a training forward of a module family without a member index")
        shape = mask_shape(mod, tuple(x.shape))
        dev = _mask_device(x)
        if isinstance(index, int):
            mask = _mask(_generator(state, index, dev), shape, p, x.dtype, dev)
        else:  # vmapped: every member's mask (unbatched draws), each member takes its row
            masks = torch.stack(
                [
                    _mask(_generator(state, e, dev), shape, p, x.dtype, dev)
                    for e in range(len(state.seeds))
                ]
            )
            mask = masks.index_select(0, index.reshape(1)).squeeze(0)
        return x * mask.to(x.device)

    return hook


def check_dropout(model: nn.Module, label: str) -> None:
    """Refuse the dropout a module family cannot give per-member masks: one line."""
    for name, mod in model.named_modules():
        if isinstance(mod, _ALPHA) and mod.p > 0:
            raise UserError(
                f"model.options.factory: {label!r} has alpha dropout ({name!r}, "
                f"{type(mod).__name__}(p={mod.p:g})); module families support nn.Dropout and "
                "nn.Dropout1d/2d/3d only: use one of those, or p=0"
            )
        if isinstance(mod, nn.MultiheadAttention) and mod.dropout > 0:
            raise UserError(
                f"model.options.factory: {label!r} has nn.MultiheadAttention({name!r}, "
                f"dropout={mod.dropout:g}), whose attention dropout draws from torch's global "
                "random generator (members would not be reproducible): build it with "
                "dropout=0 (nn.Dropout modules elsewhere are supported)"
            )


def install_dropout(model: nn.Module) -> list[str]:
    """Put ``model``'s dropout modules in eval mode and hook them; returns the names of
    those with p > 0 (the dropout a training forward applies)."""
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, DROPOUT_MODULES) and not isinstance(mod, _ALPHA):
            mod.eval()
            mod.register_forward_hook(_dropout_hook(mod), with_kwargs=True)
            if mod.p > 0:
                names.append(name)
    return names


_FUNCTIONAL: dict[Any, tuple[str, str, bool]] = {
    # func: (name, keyword of ``training`` (the third argument), its default); p is the second
    F.dropout: ("F.dropout", "training", True),
    F.dropout1d: ("F.dropout1d", "training", True),
    F.dropout2d: ("F.dropout2d", "training", True),
    F.dropout3d: ("F.dropout3d", "training", True),
    F.alpha_dropout: ("F.alpha_dropout", "training", False),
    F.feature_alpha_dropout: ("F.feature_alpha_dropout", "training", False),
    torch.dropout: ("torch.dropout", "train", True),
    torch.feature_dropout: ("torch.feature_dropout", "train", True),
    torch.alpha_dropout: ("torch.alpha_dropout", "train", True),
    torch.feature_alpha_dropout: ("torch.feature_alpha_dropout", "train", True),
}


class FindRandomDropout(TorchFunctionMode):
    """Records a dropout call that would draw from torch's global generator: a
    functional dropout with ``training=True`` and p > 0, or
    ``F.scaled_dot_product_attention`` with ``dropout_p > 0``; ``found`` names the
    first, and the submodule whose forward made it (:meth:`watch`)."""

    def __init__(self) -> None:
        super().__init__()
        self.found = ""
        self._where: list[str] = []

    def watch(self, model: nn.Module) -> Callable[[], None]:
        """Track which submodule's forward runs; returns the function removing the hooks."""
        handles = []
        for name, mod in model.named_modules():

            def enter(_m: nn.Module, _a: Any, name: str = name) -> None:
                self._where.append(name)

            def leave(_m: nn.Module, _a: Any, _o: Any) -> None:
                if self._where:
                    self._where.pop()

            handles.append(mod.register_forward_pre_hook(enter))
            handles.append(mod.register_forward_hook(leave))

        def remove() -> None:
            for h in handles:
                h.remove()

        return remove

    def _record(self, what: str) -> None:
        where = next((w for w in reversed(self._where) if w), "")
        self.found = f"{what} in the forward of {where!r}" if where else f"{what} in its forward"

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if not self.found:
            spec = _FUNCTIONAL.get(func)
            if spec is not None:
                name, kt, default = spec
                p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
                training = args[2] if len(args) > 2 else kwargs.get(kt, default)
                if bool(training) and float(p) > 0:
                    self._record(f"{name}(p={float(p):g}, training=True)")
            elif func is F.scaled_dot_product_attention:
                p = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
                if float(p) > 0:
                    self._record(f"F.scaled_dot_product_attention(dropout_p={float(p):g})")
        return func(*args, **kwargs)


def random_dropout_error(label: str, found: str | None) -> UserError:
    """The one line refusing dropout found by :class:`FindRandomDropout` (``found``), or,
    with ``found=None``, another draw from torch's global generator in the forward."""
    if found is None:
        return UserError(
            f"model.options.factory: {label!r}: its forward draws from torch's global random "
            "generator (torch.rand/randn/bernoulli, nn.RReLU, ...; members would not be "
            "reproducible): remove the draw, and use nn.Dropout modules for dropout "
            "(widthwise draws their masks per member)"
        )
    return UserError(
        f"model.options.factory: {label!r}: {found} draws from torch's global random "
        "generator (members would not be reproducible): use nn.Dropout modules "
        "(widthwise draws their masks per member), or training=False / dropout_p=0"
    )
