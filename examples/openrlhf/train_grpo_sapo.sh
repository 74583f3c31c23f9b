#!/usr/bin/env bash
# GRPO with SAPO's sigmoid gate (or cispo / pg: change the loss name; their flags are listed by --help).
# Same cluster layout as train_grpo_maspo.sh. DRY_RUN=1 prints the arguments instead of launching.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-Math-1.5B}
DATA=${DATA:-/data/math_prompts.jsonl}
REWARD_URL=${REWARD_URL:-/path/to/math_reward.py}
OUT=${OUT:-./ckpt/grpo_sapo}

ARGS=(
  --actor.policy_loss_type sapo --sapo.tau_pos 1.0 --sapo.tau_neg 1.05
  --actor.loss_agg_mode seq-mean-token-mean   # SAPO's paper aggregates per sequence
  --actor.model_name_or_path "$MODEL"
  --reward.remote_url "$REWARD_URL"
  --data.prompt_dataset "$DATA" --data.input_key input --data.label_key label --data.apply_chat_template
  --algo.advantage.estimator group_norm --rollout.n_samples_per_prompt 8 --algo.kl.init_coef 0
  --rollout.batch_size 128 --rollout.micro_batch_size 8 --rollout.max_new_tokens 2048 --data.max_len 3072
  --train.batch_size 128 --train.micro_batch_size 4 --actor.adam.lr 1e-6
  --actor.num_gpus_per_node 8 --ref.num_gpus_per_node 8 --vllm.num_engines 8 --vllm.enable_sleep
  --train.colocate_all --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable
  --ckpt.output_dir "$OUT"
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%s\0' "${ARGS[@]}"; exit 0; fi
exec python3 -m rlplugins.integrations.openrlhf.train_ppo_ray "${ARGS[@]}"
