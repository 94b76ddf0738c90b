"""The private torch APIs widthwise relies on, in one place, each pinned by a test.

torch has no public way yet to ask either question; ``tests/test_torch_compat.py``
pins what each answers, so a torch release that changes them fails there first,
not somewhere inside a probe.
"""

from __future__ import annotations

import torch
from torch import Tensor


def torch_function_mode_active() -> bool:
    """Whether a ``TorchFunctionMode`` is active (someone intercepts torch functions).

    The ensemble's batched-matmul fast path must not run then: the mode (e.g. a probe
    recording ``F.linear`` calls) has to see per-member tensors, as ``vmap`` shows them.
    """
    return bool(torch._C._len_torch_function_stack())


def is_functorch_wrapped(t: Tensor) -> bool:
    """Whether ``t`` is a functorch wrapper (a tensor inside ``vmap``/``grad``/``jvp``)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
