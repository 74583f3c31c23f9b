#!/usr/bin/env bash
# GRPO on GSM8K with MASPO as the policy loss and rlplugins' prompt-group selector, veRL 0.9.1, one node.
#
#   pip install 'rlplugins[verl]'        # on every node (the veRL workers import the adapter)
#   python3 examples/data_preprocess/gsm8k.py --local_save_dir ~/data/gsm8k     # from veRL's repository
#   bash examples/verl/run_maspo_grpo.sh [more Hydra overrides]
#
# Check the policy-loss flags on CPU before spending GPU hours (real actor worker, tiny random model):
#   rlplugins verl-smoke $(bash examples/verl/run_maspo_grpo.sh --print-loss-flags)
#
# Every rlplugins flag is spelled out below with its default; delete the ones you do not change.
# This is a GSM8K starter, not the MASPO paper's setting (that is run_maspo_paper.sh): it keeps veRL's usual
# KL loss (KL_LOSS_COEF=0 turns it off; the paper uses none) and rlplugins' prompt-group selector
# (SELECTOR=none turns it off; selection changes which prompts are trained on, so turn it off to compare losses).
# Other losses: loss_mode=rlp_sapo (SAPO honouring loss_agg_mode; temperatures in actor.tau_pos/tau_neg)
# or loss_mode=rlp_ppo_clip (PPO clip without veRL's always-on dual clip); both need no _target_.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
CKPT_DIR=${CKPT_DIR:-checkpoints/rlplugins/maspo_grpo_gsm8k}
NGPUS=${NGPUS:-8}
KL_LOSS_COEF=${KL_LOSS_COEF:-0.001}   # KL(pi || ref) loss weight; 0: no KL loss and no reference model
SELECTOR=${SELECTOR:-prompt_groups}   # prompt_groups | none

LOSS_FLAGS=(
  # MASPO through its config class: misspelt or out-of-range fields fail at configuration time
  actor_rollout_ref.actor.policy_loss._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig
  actor_rollout_ref.actor.policy_loss.loss_mode=maspo
  +actor_rollout_ref.actor.policy_loss.sigma_base=1.0     # base width of the Gaussian gate
  +actor_rollout_ref.actor.policy_loss.alpha=0.3          # width grows as pi_old^-alpha for rare tokens
  +actor_rollout_ref.actor.policy_loss.beta_pos=0.03      # advantage-dependent width, A > 0
  +actor_rollout_ref.actor.policy_loss.beta_neg=0.03      # advantage-dependent width, A < 0
  +actor_rollout_ref.actor.policy_loss.sigma_high=10.0    # clamp of the mass factor (official variant)
  +actor_rollout_ref.actor.policy_loss.adv_low=0.1        # clamp of the advantage factor (official variant)
  +actor_rollout_ref.actor.policy_loss.adv_high=10.0
  +actor_rollout_ref.actor.policy_loss.variant=official   # or: paper (unclamped formula)
  +actor_rollout_ref.actor.policy_loss.dual_clip=null     # e.g. 3.0 to cap the A < 0 loss at 3|A|
  +actor_rollout_ref.actor.policy_loss.bilateral=False    # ablation: also gate the against-advantage quadrants
  +actor_rollout_ref.actor.policy_loss.on_nonfinite=mask  # NaN/inf tokens dropped and counted; or: raise
  actor_rollout_ref.actor.loss_agg_mode=token-mean        # honoured (all five veRL modes)
)

case "$SELECTOR" in
  prompt_groups) ;;
  none) ;;
  *) echo "SELECTOR must be prompt_groups or none, got '$SELECTOR'" >&2; exit 2 ;;
esac

SELECTOR_FLAGS=(
  # prompt-group selection in the replay buffer (sync trainer); state saved with each checkpoint
  trainer.v1.sampler.custom_sampler.path=pkg://rlplugins.integrations.verl.sampler
  trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBuffer
  trainer.checkpoint_callback_class=rlplugins.integrations.verl.sampler.PromptGroupCheckpointCallback
  data.gen_batch_size=1                                             # dropped groups are refilled one by one
  +trainer.v1.sampler.sampler_kwargs.oversample=1.25                # 25% extra prompts to choose from
  +trainer.v1.sampler.sampler_kwargs.metric=reward                  # sum of rm_scores; or a reward_extra_info key
  +trainer.v1.sampler.sampler_kwargs.success_threshold=0.5          # a response passes if its score >= this
  +trainer.v1.sampler.sampler_kwargs.drop_degenerate=True           # drop all-correct / all-wrong groups
  +trainer.v1.sampler.sampler_kwargs.tier_edges=[0.3333,0.6667]     # pass-rate tiers: hard | medium | easy
  +trainer.v1.sampler.sampler_kwargs.curriculum=True                # start with easy+medium ...
  +trainer.v1.sampler.sampler_kwargs.initial_tiers=2
  +trainer.v1.sampler.sampler_kwargs.unlock_at=[0.5]                # ... admit hard at competence 0.5
  +trainer.v1.sampler.sampler_kwargs.competence_momentum=0.9
  +trainer.v1.sampler.sampler_kwargs.history_size=4                 # pass rates kept per prompt
  +trainer.v1.sampler.sampler_kwargs.stability_tau=0.25             # history std above this: unstable
  +trainer.v1.sampler.sampler_kwargs.prompt_key_field=prompts       # prompt identity: hash of its token ids
  +trainer.v1.sampler.sampler_kwargs.max_prompts=1000000            # prompt histories kept (least recent dropped)
  +trainer.v1.sampler.sampler_kwargs.max_inflight_gen_batches=null  # in-flight bound x train_batch_size; null: ceil(oversample)
  +trainer.v1.sampler.sampler_kwargs.train_batch_size=null          # null: data.train_batch_size
  +trainer.v1.sampler.sampler_kwargs.checkpoint_dir=null            # null: the folder the trainer resumes from
)

if [[ "$KL_LOSS_COEF" == 0 || "$KL_LOSS_COEF" == 0.0 ]]; then
  KL_FLAGS=(actor_rollout_ref.actor.use_kl_loss=False)
else
  KL_FLAGS=(
    actor_rollout_ref.actor.use_kl_loss=True
    actor_rollout_ref.actor.kl_loss_coef="$KL_LOSS_COEF"
    actor_rollout_ref.actor.kl_loss_type=low_var_kl
  )
fi
[[ "$SELECTOR" == none ]] && SELECTOR_FLAGS=()

TRAIN_FLAGS=(
  algorithm.adv_estimator=grpo
  algorithm.use_kl_in_reward=False
  data.train_files="$DATA_DIR/train.parquet"
  data.val_files="$DATA_DIR/test.parquet"
  data.train_batch_size=256
  data.max_prompt_length=512
  data.max_response_length=1024
  data.filter_overlong_prompts=True
  data.truncation=error
  actor_rollout_ref.model.path="$MODEL"
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.actor.strategy=fsdp2
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.ppo_mini_batch_size=64         # 256 / 64: 4 updates per rollout batch (3 off-policy)
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
  actor_rollout_ref.actor.entropy_coeff=0
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.rollout.tensor_model_parallel_size=2
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16
  trainer.n_gpus_per_node="$NGPUS"
  trainer.nnodes=1
  trainer.logger='["console","wandb"]'
  trainer.project_name=rlplugins
  trainer.experiment_name=maspo_grpo_gsm8k
  trainer.default_local_dir="$CKPT_DIR"
  trainer.save_freq=20
  trainer.test_freq=10
  trainer.total_epochs=15
)

if [[ "${1:-}" == "--print-loss-flags" ]]; then
  printf '%s\n' "${LOSS_FLAGS[@]}"
  exit 0
fi

exec python3 -m verl.trainer.main_ppo "${TRAIN_FLAGS[@]}" "${KL_FLAGS[@]}" "${LOSS_FLAGS[@]}" "${SELECTOR_FLAGS[@]}" "$@"
