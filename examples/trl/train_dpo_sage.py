"""DPO with SAGE pair selection (or any baseline by name) in TRL 1.16.0's DPOTrainer; every DPOConfig flag works.

    accelerate launch examples/trl/train_dpo_sage.py \
        --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
        --output_dir out/dpo-sage --beta 0.1 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 \
        --selector sage --sage_selection_ratio 0.5 --sage_rescore_interval 100 --selector_pass_rate_column pass_rate

Selectors: sage, sage_no_curriculum, sage_no_filter, signal_only, dynamic_loss, dpo_full, random_subset,
static_curriculum, selective_dpo, static_low_gap, static_high_margin. Every SageConfig field is a --sage_<field>
flag; beta and seed are DPO's --beta and --seed. One selector step is one optimizer step on each process. With
several processes use DDP or ZeRO-1/2 (scoring forwards are per process). Resume with --resume_from_checkpoint: the
selector state is saved next to every checkpoint.

The offline route (score once, then a plain DPOTrainer reads the kept pairs in order): --offline true.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser

from rlplugins.integrations.trl import SageDPOConfig, SageDPOTrainer


@dataclass
class DPOScriptArguments(ScriptArguments):
    offline: bool = field(default=False, metadata={
        "help": "score every pair once with the initial policy, keep the top sage_selection_ratio by SAGE score and "
                "train a plain DPOTrainer on them in that order (train_sampling_strategy='sequential')"})


def parse(argv: list[str] | None = None) -> tuple[DPOScriptArguments, SageDPOConfig, ModelConfig]:
    parser = TrlParser((DPOScriptArguments, SageDPOConfig, ModelConfig))
    return parser.parse_args_and_config(argv)


def main(argv: list[str] | None = None) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from rlplugins.integrations.trl import select_pairs_offline

    script_args, training_args, model_args = parse(argv)
    name = model_args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=model_args.dtype)
    ref_model = AutoModelForCausalLM.from_pretrained(name, dtype=model_args.dtype)
    train = load_dataset(script_args.dataset_name, name=script_args.dataset_config)[script_args.dataset_train_split]

    if not script_args.offline:
        trainer = SageDPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=train,
                                 processing_class=tokenizer)
    else:
        # A SageDPOConfig is a DPOConfig: plain DPOTrainers take it and ignore the selector fields.
        training_args.train_sampling_strategy = "sequential"
        scorer = DPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=train,
                            processing_class=tokenizer)
        selected = select_pairs_offline(scorer, training_args.selector_config())
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=selected,
                             processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
