"""Triton kernels for gated token losses: logits in, loss and gradient out, no [tokens x vocab] log-softmax.

    token_logprobs(logits, labels, temperature=1.0, return_entropy=False, inplace_backward=False)
        -> logp [, entropy]          generic primitive (docs/kernels.md#entry-points)
    gated_token_loss(log_prob, old_log_prob, advantages, loss="maspo", config=...)
        -> (loss_t, dloss/dlogp)      one elementwise kernel for the whole gate family
    fused_policy_loss(logits, labels, old_log_prob, advantages, response_mask, loss="maspo", config=...)
        -> FusedPolicyLossOutput(token_loss, log_prob, entropy)   logits in, per-token loss out (approach B)

Kernels return per-token quantities; aggregation (veRL's modes, global batch counts, importance weights) is the
core's ``rlplugins.losses.agg_loss``, and metrics come from the core too.

Installed as ``rlplugins.kernels``; needs ``triton``. Functions take tensors and plain numbers (a config is
read by field name: the core's dataclasses or a mapping). CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` (slow, for tests). The rlplugins core picks these or a chunked torch path with
``backend="auto"`` (``rlplugins.losses.policy_loss_from_logits``).
"""

from .fused_loss import FusedPolicyLossOutput, fused_policy_loss
from .gated_loss import gated_token_loss
from .gates import GateSpec, get_gate, has_gate, list_gates, register_gate
from .logprobs import token_logprobs

__all__ = [
    "FusedPolicyLossOutput",
    "GateSpec",
    "fused_policy_loss",
    "gated_token_loss",
    "get_gate",
    "has_gate",
    "list_gates",
    "register_gate",
    "token_logprobs",
]
