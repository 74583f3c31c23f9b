"""The pair margin, written once: every selector, score and baseline computes it here.

``implicit`` (docs/sage.md#margin): the scaled implicit-reward margin, ``u = beta * ((pc - rc) - (pr - rr))``. It is
0 for every pair while the policy equals the reference (step 0), so it carries no information before training.

``policy`` (ours, not from the paper): the policy's own likelihood margin, ``u = beta * (pc - pr)``. It equals the
implicit margin plus the reference's margin ``beta * (rc - rr)``, so it is informative at step 0 (where it is the
reference's margin, readable from the cached reference log-probs) and says whether the policy would rather generate
the chosen or the rejected response: ``u < 0`` is an error of the model, not only of the DPO objective.

Log-probs are sums over response tokens (as DPO and OpenRLHF's ``_get_batch_logps`` compute them).
"""

from __future__ import annotations

import torch

from rlplugins._config import check_choice, check_number

from ._checks import check_logps
from .config import MARGIN_SOURCES


def pair_margins(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    source: str = "implicit",
) -> torch.Tensor:
    """Margin per pair from ``source`` (module docstring), CPU float64 ``[N]``; non-finite inputs give non-finite u."""
    beta = float(check_number("", "beta", beta, low=0.0, low_inclusive=False))
    check_choice("", "source", source, MARGIN_SOURCES)
    pc, pr, rc, rr = check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    with torch.no_grad():
        if source == "policy":
            # rc and rr are still validated (and a non-finite reference still flags the pair): training needs them
            # in place, same values as beta * (pc - pr) + 0.0 * (rc - rr): fewer allocations per (chunked) call
            return (pc - pr).mul_(beta).add_((rc - rr).mul_(0.0))
        return beta * ((pc - rc) - (pr - rr))


def implicit_margins(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Scaled implicit-reward margin ``u = beta * ((pc - rc) - (pr - rr))`` per pair, CPU float64 ``[N]``."""
    return pair_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
