#!/usr/bin/env bash
# The MASPO paper's recipe as far as it is published, on OpenRLHF 0.11.2: MASPO, or with LOSS=grpo the matched
# GRPO baseline (OpenRLHF's PPO clip 0.2 with dual clip c = 3, the official code's `ppo` mode). Everything but
# the loss flags is shared, so the two runs differ only in the loss. DRY_RUN=1 prints the arguments instead.
#
#   pip install 'openrlhf[vllm]==0.11.2' rlplugins math-verify     # rlplugins importable on every Ray node
#   DATA=dapo_math_17k.jsonl REWARD_URL=math_verify_reward.py bash examples/openrlhf/train_maspo_paper.sh
#   LOSS=grpo DATA=... REWARD_URL=... bash examples/openrlhf/train_maspo_paper.sh
#
# Published (the official repository's README and public notes on the paper):
#   DeepSeek-R1-Distill-Qwen-1.5B (also 7B, 14B); DAPO-Math-17K; binary verifier reward (math_verify); 512 prompts
#   per rollout batch and mini-batches of 32 prompts, one epoch: 16 optimiser steps per batch, 15 of them
#   off-policy; no KL (loss or reward), no entropy bonus; token-level aggregation; MASPO at the official defaults.
# NOT published, set here to common choices and marked ASSUMPTION below: group size, learning rate, lengths,
#   sampling temperatures, number of episodes, evaluation sampling.
set -euo pipefail

LOSS=${LOSS:-maspo}                                    # maspo | grpo
MODEL=${MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}
DATA=${DATA:-/data/dapo_math_17k.jsonl}                # DAPO-Math-17K, one {"prompt": ..., "label": answer} per line
EVAL_DATA=${EVAL_DATA:-/data/aime_2024.jsonl}          # same format
REWARD_URL=${REWARD_URL:-/path/to/math_verify_reward.py} # a .py reward function (1 if math_verify accepts, else 0)
OUT=${OUT:-./ckpt/paper_${LOSS}_r1distill1.5b}
G=8                                                    # ASSUMPTION: group size (responses per prompt)

case "$LOSS" in
  maspo) LOSS_ARGS=(
    # --- rlplugins: MASPO at the official defaults (no dual clip in the official maspo mode) ---
    --actor.policy_loss_type maspo
    --maspo.sigma_base 1.0 --maspo.alpha 0.3 --maspo.beta_pos 0.03 --maspo.beta_neg 0.03
    --maspo.sigma_high 10.0 --maspo.adv_low 0.1 --maspo.adv_high 10.0 --maspo.variant official
    --maspo.bilateral false
  ) ;;
  grpo) LOSS_ARGS=(
    # --- OpenRLHF's own PPO clip with dual clip: the official code's GRPO baseline ---
    --actor.policy_loss_type ppo --actor.eps_clip_low_high 0.2 0.2 --actor.dual_clip 3.0
  ) ;;
  *) echo "LOSS must be maspo or grpo, got '$LOSS'" >&2; exit 2 ;;
esac

ARGS=(
  "${LOSS_ARGS[@]}"
  # --- the published recipe ---
  --actor.loss_agg_mode token-mean
  --algo.advantage.estimator group_norm --rollout.n_samples_per_prompt "$G"
  --rollout.batch_size 512                             # 512 prompts per rollout batch
  --train.batch_size $((32 * G))                       # mini-batch of 32 prompts x G responses: 16 steps per batch
  --train.max_epochs 1                                 # one pass over each batch
  --algo.kl.init_coef 0                                # no KL penalty in the reward; --algo.kl.use_loss stays off
  # (no --actor.entropy_coef: no entropy bonus, and no entropy computed)
  # --- ASSUMPTIONS (not published) ---
  --actor.adam.lr 1e-6
  --rollout.temperature 1.0 --rollout.top_p 1.0
  --rollout.max_new_tokens 8192 --data.max_len 9216    # long-CoT budget; 8k-16k is common for R1-Distill
  --train.num_episodes 10
  --eval.dataset "$EVAL_DATA" --eval.temperature 0.6 --eval.n_samples_per_prompt 32   # the paper's Avg@32 / Pass@32
  --eval.steps 10
  # --- data and reward ---
  --actor.model_name_or_path "$MODEL"
  --reward.remote_url "$REWARD_URL"
  --data.prompt_dataset "$DATA" --data.input_key prompt --data.label_key label --data.apply_chat_template
  # --- throughput only (8 GPUs, colocated, vLLM): nothing below changes the algorithm ---
  --rollout.micro_batch_size 16 --train.micro_batch_size 4
  --actor.num_nodes 1 --actor.num_gpus_per_node 8
  --vllm.num_engines 8 --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6 --vllm.enable_sleep
  --train.colocate_all --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable
  --ckpt.output_dir "$OUT"
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%s\0' "${ARGS[@]}"; exit 0; fi
exec python3 -m rlplugins.integrations.openrlhf.train_ppo_ray "${ARGS[@]}"
