"""Install a core policy loss into an OpenRLHF ``ActorPPOTrainer`` after it was built.

``ActorPPOTrainer.__init__`` builds ``self.actor_loss_fn = PolicyLoss(...)`` from the parsed flags and
``training_step`` calls it with OpenRLHF's contract; we replace that one attribute with a ``CorePolicyLoss``
configured from the same flags (the original serves as the template) and wrap ``training_step`` so that the
core's metrics are logged next to OpenRLHF's (``ppo_train`` all-reduces them with the weights we declare).

No Ray and no vLLM here: this module runs inside the policy workers (see ``ray_actor``) and in tests.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

from .loss_flags import LossSpec
from .policy_loss import CorePolicyLoss, build_policy_loss

# Logged under "rlplugins/<key>"; all are means over the micro-batch's valid tokens, hence "token"-weighted
# in ppo_train's all-reduce. Extremes (gate_min, ratio_max) and counts (valid_tokens, nonfinite_tokens) would
# be mis-averaged by that all-reduce, so they are not logged.
_LOGGED_METRICS = (
    "gate_mean",
    "damp_frac",
    "eff_weight_mean",
    "ratio_mean",
    "quad_pos_frac",
    "quad_neg_frac",
    "pg_clipfrac",
    "pg_clipfrac_lower",
)
METRIC_PREFIX = "rlplugins/"


def install_policy_loss(trainer: Any, spec: LossSpec | SimpleNamespace | dict) -> CorePolicyLoss:
    """Replace ``trainer.actor_loss_fn`` by the core loss ``spec`` describes; idempotent."""
    spec = LossSpec.coerce(spec)
    current = trainer.actor_loss_fn
    if isinstance(current, CorePolicyLoss):  # already installed (e.g. init_model_from_pretrained ran twice)
        template = getattr(current, "_openrlhf_template")
    else:
        template = current
    loss_fn = build_policy_loss(spec.name, spec.overrides, template=template, on_nonfinite=spec.on_nonfinite)
    loss_fn._openrlhf_template = template
    trainer.actor_loss_fn = loss_fn
    _wrap_training_step(trainer)
    return loss_fn


def _wrap_training_step(trainer: Any) -> None:
    step = trainer.training_step
    if getattr(step, "_rlplugins_wrapped", False):
        return

    @functools.wraps(step)
    def training_step(*args: Any, **kwargs: Any) -> dict:
        status = step(*args, **kwargs)
        metrics = getattr(trainer.actor_loss_fn, "last_metrics", None) or {}
        for key in _LOGGED_METRICS:
            if key in metrics:
                status["metrics"][METRIC_PREFIX + key] = float(metrics[key])
                status["weights"][METRIC_PREFIX + key] = "token"
        return status

    training_step._rlplugins_wrapped = True
    trainer.training_step = training_step
