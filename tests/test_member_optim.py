"""widthwise.member_optim: torch's SGD and Adam(W) with per-member scalars.

Oracle: torch's own optimizer, one per member, at that member's value (float64).
"""

from __future__ import annotations

import pytest
import torch

from widthwise.member_optim import MemberAdam, MemberSGD

E, SHAPE, STEPS = 3, (4, 5), 6


def _grads(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((E, *SHAPE), generator=gen, dtype=torch.float64) for _ in range(STEPS)]


def _run(make, w0: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    w = w0.clone().requires_grad_()
    opt = make([{"params": [w], "lr": 0.05, "weight_decay": 0.01}])
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


def _per_member(make_torch, w0: torch.Tensor, grads: list[torch.Tensor], e: int) -> torch.Tensor:
    w = w0[e].clone().requires_grad_()
    opt = make_torch([w])
    for g in grads:
        w.grad = g[e].clone()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("nesterov", [False, True])
def test_member_sgd_is_torch_sgd_per_member(nesterov: bool) -> None:
    w0 = torch.randn((E, *SHAPE), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = _grads(2)
    momentum = [0.0, 0.5, 0.9] if not nesterov else [0.3, 0.5, 0.9]
    got = _run(
        lambda g: MemberSGD(g, 0.05, torch.tensor(momentum, dtype=torch.float64), nesterov),
        w0,
        grads,
    )
    for e, m in enumerate(momentum):
        ref = _per_member(
            lambda p, m=m: torch.optim.SGD(
                p, lr=0.05, momentum=m, nesterov=nesterov, weight_decay=0.01
            ),
            w0,
            grads,
            e,
        )
        torch.testing.assert_close(got[e], ref, rtol=1e-14, atol=1e-15)
    assert not torch.allclose(got[0], got[2])  # the values matter


@pytest.mark.parametrize("decoupled", [False, True])
def test_member_adam_is_torch_adam_per_member(decoupled: bool) -> None:
    w0 = torch.randn((E, *SHAPE), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = _grads(4)
    b1, b2, eps = [0.8, 0.9, 0.95], [0.99, 0.999, 0.9], [1e-8, 1e-3, 0.1]
    got = _run(
        lambda g: MemberAdam(
            g, 0.05, *(torch.tensor(v, dtype=torch.float64) for v in (b1, b2, eps)), decoupled
        ),
        w0,
        grads,
    )
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    for e in range(E):
        ref = _per_member(
            lambda p, e=e: cls(p, lr=0.05, betas=(b1[e], b2[e]), eps=eps[e], weight_decay=0.01),
            w0,
            grads,
            e,
        )
        torch.testing.assert_close(got[e], ref, rtol=1e-13, atol=1e-15)
    assert not torch.allclose(got[0], got[2])


def test_shared_floats_are_torch_bit_for_bit() -> None:
    """Unswept scalars stay Python floats, and the step is then torch's exactly."""
    w0 = torch.randn((E, *SHAPE), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = _grads(6)
    got = _run(lambda g: MemberAdam(g, 0.05, 0.9, 0.999, 1e-8), w0, grads)
    ref = _run(lambda g: torch.optim.Adam(g, lr=0.05, foreach=False), w0, grads)
    assert torch.equal(got, ref)
    got = _run(lambda g: MemberSGD(g, 0.05, 0.9), w0, grads)
    ref = _run(lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, foreach=False), w0, grads)
    assert torch.equal(got, ref)


def test_state_round_trips_through_a_checkpoint() -> None:
    """The state has torch's keys: save after 3 steps, load into a fresh one, go on."""
    w0 = torch.randn((E, *SHAPE), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    grads = _grads(8)
    b2 = torch.tensor([0.99, 0.999, 0.9], dtype=torch.float64)
    whole = _run(lambda g: MemberAdam(g, 0.05, 0.9, b2, 1e-8), w0, grads)
    w = w0.clone().requires_grad_()
    opt = MemberAdam([{"params": [w], "lr": 0.05, "weight_decay": 0.01}], 0.05, 0.9, b2, 1e-8)
    for g in grads[:3]:
        w.grad = g.clone()
        opt.step()
    state = opt.state_dict()
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    w2 = w.detach().clone().requires_grad_()
    opt2 = MemberAdam([{"params": [w2], "lr": 0.05, "weight_decay": 0.01}], 0.05, 0.9, b2, 1e-8)
    opt2.load_state_dict(state)
    for g in grads[3:]:
        w2.grad = g.clone()
        opt2.step()
    assert torch.equal(w2.detach(), whole)
