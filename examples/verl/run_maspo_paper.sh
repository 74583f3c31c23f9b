#!/usr/bin/env bash
# The MASPO paper's recipe as far as it is published, on veRL 0.9.1: MASPO, or with LOSS=grpo the matched
# GRPO baseline (PPO clip + dual clip c = 3, the official code's `ppo` mode and veRL's `vanilla`). Everything
# but the loss flags is shared, so the two runs differ only in the loss.
#
#   pip install 'rlplugins[verl]' math-verify                    # on every node
#   # DAPO-Math-17K (train) and AIME 2024 (validation) as parquet, with veRL's DAPO recipe data script:
#   #   https://github.com/volcengine/verl  recipe/dapo/prepare_dapo_data.sh  -> $DATA_DIR/{dapo-math-17k,aime-2024}.parquet
#   bash examples/verl/run_maspo_paper.sh                        # MASPO
#   LOSS=grpo bash examples/verl/run_maspo_paper.sh              # the baseline
#
# Check the loss flags on CPU first (veRL's real actor worker, tiny random model):
#   rlplugins verl-smoke $(bash examples/verl/run_maspo_paper.sh --print-loss-flags)
#   rlplugins verl-smoke $(LOSS=grpo bash examples/verl/run_maspo_paper.sh --print-loss-flags)
#
# Published (the official repository's README and public notes on the paper):
#   DeepSeek-R1-Distill-Qwen-1.5B (also 7B, 14B); DAPO-Math-17K; binary verifier reward; 512 prompts per rollout
#   batch and PPO mini-batches of 32 prompts, one epoch: 16 optimiser steps per batch, 15 of them off-policy;
#   no KL loss, no KL in the reward, no entropy bonus; token-level aggregation; MASPO at the official defaults.
# NOT published, set here to common choices and marked ASSUMPTION below: group size, learning rate, prompt
#   and response lengths, sampling temperatures, number of steps, evaluation sampling.
# Not reproduced: the paper grades with math_verify / a prime_math grader; veRL's built-in reward for
#   data_source=math_dapo is its own math_dapo scorer (see REWARD_FLAGS to plug in math-verify).
set -euo pipefail

LOSS=${LOSS:-maspo}                                # maspo | grpo
MODEL=${MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}
DATA_DIR=${DATA_DIR:-$HOME/data/dapo}
CKPT_DIR=${CKPT_DIR:-checkpoints/rlplugins/paper_${LOSS}_r1distill1.5b}
NGPUS=${NGPUS:-8}
NNODES=${NNODES:-1}

case "$LOSS" in
  maspo)
    LOSS_FLAGS=(
      # MASPO at the official defaults (every field spelt out; the config class validates them)
      actor_rollout_ref.actor.policy_loss._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig
      actor_rollout_ref.actor.policy_loss.loss_mode=maspo
      +actor_rollout_ref.actor.policy_loss.sigma_base=1.0
      +actor_rollout_ref.actor.policy_loss.alpha=0.3        # README: 0.5 on 1.5B for more tail exploration, 0.3 on >= 7B
      +actor_rollout_ref.actor.policy_loss.beta_pos=0.03
      +actor_rollout_ref.actor.policy_loss.beta_neg=0.03
      +actor_rollout_ref.actor.policy_loss.sigma_high=10.0
      +actor_rollout_ref.actor.policy_loss.adv_low=0.1
      +actor_rollout_ref.actor.policy_loss.adv_high=10.0
      +actor_rollout_ref.actor.policy_loss.variant=official
      +actor_rollout_ref.actor.policy_loss.dual_clip=null   # the official maspo mode has no dual clip
      +actor_rollout_ref.actor.policy_loss.bilateral=False
      +actor_rollout_ref.actor.policy_loss.on_nonfinite=mask   # NaN/inf tokens dropped and counted (the adapter default)
      actor_rollout_ref.actor.loss_agg_mode=token-mean
    ) ;;
  grpo)
    LOSS_FLAGS=(
      # veRL's built-in PPO clip, which always applies the dual clip: the official code's GRPO baseline
      actor_rollout_ref.actor.policy_loss.loss_mode=vanilla
      actor_rollout_ref.actor.clip_ratio_low=0.2
      actor_rollout_ref.actor.clip_ratio_high=0.2
      actor_rollout_ref.actor.clip_ratio_c=3.0
      actor_rollout_ref.actor.loss_agg_mode=token-mean
    ) ;;
  *) echo "LOSS must be maspo or grpo, got '$LOSS'" >&2; exit 2 ;;
esac

if [[ "${1:-}" == "--print-loss-flags" ]]; then
  printf '%s\n' "${LOSS_FLAGS[@]}"
  exit 0
fi

RECIPE_FLAGS=(
  algorithm.adv_estimator=grpo                         # group-normalised outcome advantage, unbiased std
  algorithm.norm_adv_by_std_in_grpo=True
  algorithm.use_kl_in_reward=False                     # paper: no KL anywhere
  actor_rollout_ref.actor.use_kl_loss=False
  actor_rollout_ref.actor.entropy_coeff=0              # paper: no entropy bonus
  data.train_batch_size=512                            # paper: 512 prompts per rollout batch
  actor_rollout_ref.actor.ppo_mini_batch_size=32       # paper: 32 prompts per mini-batch -> 16 updates per batch
  actor_rollout_ref.actor.ppo_epochs=1                 # paper: one pass over each batch
  actor_rollout_ref.actor.shuffle=False
  actor_rollout_ref.rollout.n=8                        # ASSUMPTION: group size G (not published)
  actor_rollout_ref.actor.optim.lr=1e-6                # ASSUMPTION: veRL's default learning rate
  actor_rollout_ref.actor.optim.weight_decay=0.01      # ASSUMPTION: veRL's default
  actor_rollout_ref.actor.grad_clip=1.0                # ASSUMPTION: veRL's default
  data.max_prompt_length=1024                          # ASSUMPTION: DAPO-Math prompts are short
  data.max_response_length=8192                        # ASSUMPTION: long-CoT budget (8k-16k is common for R1-Distill)
  actor_rollout_ref.rollout.temperature=1.0            # ASSUMPTION: rollout sampling at T = 1
  actor_rollout_ref.rollout.top_p=1.0
  actor_rollout_ref.rollout.val_kwargs.do_sample=True  # the paper reports Avg@32 / Pass@32 ...
  actor_rollout_ref.rollout.val_kwargs.n=32
  actor_rollout_ref.rollout.val_kwargs.temperature=0.6 # ASSUMPTION: the R1-Distill evaluation temperature
  actor_rollout_ref.rollout.val_kwargs.top_p=0.95      # ASSUMPTION
  trainer.total_epochs=10                              # ASSUMPTION: the number of steps is not published
)

REWARD_FLAGS=(
  # veRL scores data_source=math_dapo with its built-in math_dapo scorer. The paper used math_verify: to match it,
  # point custom_reward_function.path at a file whose compute_score calls math_verify (pip install math-verify).
  # reward.custom_reward_function.path=/path/to/math_verify_reward.py
  # reward.custom_reward_function.name=compute_score
)

SYSTEM_FLAGS=(
  # throughput only: nothing below changes the algorithm
  data.train_files="$DATA_DIR/dapo-math-17k.parquet"
  data.val_files="$DATA_DIR/aime-2024.parquet"
  data.filter_overlong_prompts=True
  data.truncation=error
  actor_rollout_ref.model.path="$MODEL"
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.actor.strategy=fsdp2
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24576
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.7
  actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
  actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=32768
  trainer.n_gpus_per_node="$NGPUS"
  trainer.nnodes="$NNODES"
  trainer.logger='["console","wandb"]'
  trainer.project_name=rlplugins_maspo_paper
  trainer.experiment_name="${LOSS}_r1distill1.5b_dapo17k"
  trainer.default_local_dir="$CKPT_DIR"
  trainer.save_freq=20
  trainer.test_freq=10
  trainer.val_before_train=True
)

exec python3 -m verl.trainer.main_ppo "${RECIPE_FLAGS[@]}" "${REWARD_FLAGS[@]}" "${SYSTEM_FLAGS[@]}" "${LOSS_FLAGS[@]}" "$@"
