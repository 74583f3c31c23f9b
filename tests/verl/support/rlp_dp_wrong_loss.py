"""A deliberately wrong policy loss for the data-parallel check's negative control (imported into every rank
through veRL's own VERL_USE_EXTERNAL_MODULES).

``rlp_test_local_norm`` is PPO's unclipped surrogate aggregated *locally*: it ignores
``config.global_batch_info`` (no global token/sequence counts, no dp_size), the mistake the DP check exists to
catch. On one rank with micro-batches it already mis-weights micro-batches; on two ranks FSDP's gradient
average additionally halves it.
"""

import torch
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss


@register_policy_loss("rlp_test_local_norm")
def local_norm_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                    rollout_is_weights=None):
    loss = -advantages * torch.exp(log_prob - old_log_prob)
    if rollout_is_weights is not None:
        loss = loss * rollout_is_weights
    return agg_loss(loss_mat=loss, loss_mask=response_mask, loss_agg_mode=loss_agg_mode), {}
