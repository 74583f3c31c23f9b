"""Loss lists and Hypothesis strategies shared by the core loss tests (``import _strategies``: tests/conftest.py).

The loss lists come from the registry, so a newly registered loss is covered by every family property without
editing the tests; an elementwise loss (``PolicyLossSpec.elementwise``) also gets the per-token properties."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from rlplugins.losses import get_policy_loss, list_policy_losses


def all_losses() -> list[str]:
    """Every registered policy loss, sorted."""
    return list_policy_losses()


def elementwise_losses() -> list[str]:
    """The registered losses whose per-token loss depends on that token only (not gspo's sequence ratio)."""
    return [name for name in list_policy_losses() if get_policy_loss(name).elementwise]


# Read once, when pytest collects the test modules (parametrize needs a list).
ALL_LOSSES = all_losses()
ELEMENTWISE_LOSSES = elementwise_losses()


@st.composite
def policy_batch(draw, max_b: int = 4, max_t: int = 7, log_ratio_scale: float = 1.0, adv_scale: float = 3.0,
                 dtype=torch.float64):
    """Random [B, T] inputs: log-probs <= 0, nearby old log-probs, per-sequence advantages, a random mask."""
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=dtype) * 6.0
    delta = torch.randn(b, t, generator=g, dtype=dtype) * log_ratio_scale
    logp = torch.clamp(old + delta, max=0.0)
    adv = (torch.randn(b, 1, generator=g, dtype=dtype) * adv_scale).expand(b, t).clone()
    mask = torch.rand(b, t, generator=g) < draw(st.floats(0.3, 1.0))
    return logp, old, adv, mask
