#!/usr/bin/env bash
# DPO with SAGE pair selection on OpenRLHF 0.11.2 (DeepSpeed launcher, 8 GPUs, ZeRO-2).
# Swap --selector for any baseline: dpo_full random_subset static_curriculum selective_dpo static_low_gap
# static_high_margin dynamic_loss, or the ablations sage_no_curriculum sage_no_filter signal_only.
# DRY_RUN=1 prints the arguments instead of launching.
set -euo pipefail

MODEL=${MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B}
DATA=${DATA:-/data/math_pairs.jsonl}   # {"prompt", "chosen", "rejected", "pass_rate"} per line
OUT=${OUT:-./ckpt/dpo_sage}

ARGS=(
  # --- rlplugins: the selector (beta and seed come from --model.beta and --train.seed) ---
  --selector sage
  --sage.selection_ratio 0.5 --sage.rescore_interval 10 --sage.num_tiers 3   # the defaults, spelled out
  --selector.pass_rate_key pass_rate     # curriculum tiers from each problem's pass rate
  # --- OpenRLHF: DPO ---
  --model.model_name_or_path "$MODEL" --model.beta 0.1
  --data.dataset "$DATA" --data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected
  --data.apply_chat_template --data.max_len 4096
  --train.batch_size 128 --train.micro_batch_size 2 --train.max_epochs 2 --train.seed 42
  --adam.lr 5e-7 --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.03
  --ds.zero_stage 2 --ds.param_dtype bf16 --model.gradient_checkpointing_enable
  --ckpt.output_dir "$OUT" --ckpt.save_steps 200
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%s\0' "${ARGS[@]}"; exit 0; fi
exec deepspeed --module rlplugins.integrations.openrlhf.train_dpo "${ARGS[@]}"
