#!/usr/bin/env bash
# GRPO with MASPO's soft gate instead of PPO's hard clip, on OpenRLHF 0.11.2 (8 GPUs, colocated, vLLM rollouts).
# Needs: pip install 'openrlhf[vllm]==0.11.2' rlplugins  (rlplugins importable on every Ray node).
# Edit MODEL / DATA / REWARD_URL. DRY_RUN=1 prints the arguments instead of launching.
# A starter, not the paper's setting (train_maspo_paper.sh): 128 prompts x 8 samples = 1024 per rollout batch,
# --train.batch_size 128 samples: 8 optimiser steps per batch, 7 of them off-policy (where MASPO's gate acts).
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-Math-1.5B}
DATA=${DATA:-/data/math_prompts.jsonl}            # one {"input": ..., "label": ...} per line
REWARD_URL=${REWARD_URL:-/path/to/math_reward.py} # OpenRLHF's --reward.remote_url (a URL or a .py reward function)
OUT=${OUT:-./ckpt/grpo_maspo}

ARGS=(
  # --- rlplugins: the loss and its parameters (defaults = the official MASPO code) ---
  --actor.policy_loss_type maspo
  --maspo.sigma_base 1.0 --maspo.alpha 0.3 --maspo.beta_pos 0.03 --maspo.beta_neg 0.03
  # --- OpenRLHF: GRPO on 8 GPUs ---
  --actor.model_name_or_path "$MODEL"
  --reward.remote_url "$REWARD_URL"
  --data.prompt_dataset "$DATA" --data.input_key input --data.label_key label --data.apply_chat_template
  --algo.advantage.estimator group_norm --rollout.n_samples_per_prompt 8
  --algo.kl.init_coef 0 --actor.loss_agg_mode token-mean   # no KL penalty (OpenRLHF's default is 0.01; the paper uses none)
  --rollout.batch_size 128 --rollout.micro_batch_size 8 --rollout.max_new_tokens 2048 --data.max_len 3072
  --train.batch_size 128 --train.micro_batch_size 4 --train.max_epochs 1 --train.num_episodes 1
  --actor.adam.lr 1e-6
  --actor.num_nodes 1 --actor.num_gpus_per_node 8 --ref.num_gpus_per_node 8
  --vllm.num_engines 8 --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6 --vllm.enable_sleep
  --train.colocate_all --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable
  --ckpt.output_dir "$OUT"
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%s\0' "${ARGS[@]}"; exit 0; fi
exec python3 -m rlplugins.integrations.openrlhf.train_ppo_ray "${ARGS[@]}"
