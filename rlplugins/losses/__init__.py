"""Policy losses: MASPO and its peers behind one registry and one call contract.

    loss, metrics = compute_policy_loss("maspo", log_prob=..., old_log_prob=..., advantages=...,
                                        response_mask=..., loss_agg_mode="token-mean", config=MaspoConfig())
"""

from .advantages import grpo_advantages
from .aggregation import AGG_MODES, agg_loss
from .api import METRIC_KEYS, compute_policy_loss, metrics_to_floats, token_policy_loss
from .chunked_logprobs import chunked_token_logprobs
from .from_logits import BACKENDS, LogitsPolicyLossOutput, LogprobsOutput, logprobs_from_logits, policy_loss_from_logits, resolve_backend
from .dpo import DPO_LOSS_TYPES, DPOConfig, DPOLossOutput, dpo_loss
from .config import (
    CispoConfig,
    ClipHigherConfig,
    DualClipConfig,
    GspoConfig,
    MaspoConfig,
    PgConfig,
    PolicyLossConfig,
    PpoClipConfig,
    SapoConfig,
    UnclippedConfig,
)
from .registry import PolicyLossSpec, get_policy_loss, list_policy_losses, make_config, register_policy_loss
from .token_loss import TokenLoss

# Importing the loss modules registers them.
from . import cispo, gspo, maspo, pg, ppo_clip, sapo, unclipped  # noqa: E402,F401  isort: skip

__all__ = [
    "BACKENDS",
    "LogitsPolicyLossOutput",
    "LogprobsOutput",
    "chunked_token_logprobs",
    "logprobs_from_logits",
    "policy_loss_from_logits",
    "resolve_backend",
    "AGG_MODES",
    "METRIC_KEYS",
    "CispoConfig",
    "ClipHigherConfig",
    "DPO_LOSS_TYPES",
    "DPOConfig",
    "DPOLossOutput",
    "DualClipConfig",
    "GspoConfig",
    "MaspoConfig",
    "PgConfig",
    "PolicyLossConfig",
    "PolicyLossSpec",
    "PpoClipConfig",
    "SapoConfig",
    "TokenLoss",
    "UnclippedConfig",
    "agg_loss",
    "compute_policy_loss",
    "metrics_to_floats",
    "dpo_loss",
    "get_policy_loss",
    "grpo_advantages",
    "list_policy_losses",
    "make_config",
    "register_policy_loss",
    "token_policy_loss",
]
