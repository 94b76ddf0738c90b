"""The private torch calls of widthwise.torch_compat answer as the code expects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from widthwise.torch_compat import is_functorch_wrapped, torch_function_mode_active

pytestmark = pytest.mark.quick


class _Record(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.seen.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def test_torch_function_mode_active_inside_a_mode_only() -> None:
    assert torch_function_mode_active() is False
    with _Record() as rec:
        assert torch_function_mode_active() is True
        F.linear(torch.ones(2, 3), torch.ones(4, 3))
        with _Record():
            assert torch_function_mode_active() is True
    assert torch_function_mode_active() is False
    assert "linear" in rec.seen


def test_is_functorch_wrapped_inside_vmap_grad_and_jvp() -> None:
    x = torch.ones(3, 2)
    assert is_functorch_wrapped(x) is False
    seen: list[bool] = []

    def f(v: torch.Tensor) -> torch.Tensor:
        seen.append(is_functorch_wrapped(v))
        return (v * v).sum()

    torch.func.vmap(f)(x)
    torch.func.grad(f)(x[0])
    torch.func.jvp(f, (x[0],), (x[0],))
    assert seen == [True, True, True]
    assert is_functorch_wrapped(torch.func.vmap(lambda v: v)(x)) is False  # unwrapped outside
