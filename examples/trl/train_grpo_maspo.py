"""GRPO with MASPO (or any rlplugins loss) in TRL 1.16.0's GRPOTrainer; every GRPOConfig flag works as in TRL.

    accelerate launch examples/trl/train_grpo_maspo.py \
        --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
        --output_dir out/grpo-maspo --reward_funcs accuracy_reward \
        --loss_type maspo --maspo_alpha 0.3 --maspo_beta_pos 0.03 --loss_normalizer dapo \
        --num_iterations 2 --num_generations 8 --max_completion_length 1024 --use_vllm true --vllm_mode colocate

Other losses: --loss_type ppo_clip|clip_higher|dual_clip|gspo|pg|unclipped|rlp_sapo|rlp_cispo, each with its own
fields (--gspo_eps_high ..., --rlp_sapo reads --sapo_tau_pos/--sapo_tau_neg); TRL's own --loss_type grpo|dapo|...
run TRL's code unchanged. MASPO only differs from plain policy gradient when the ratio moves off 1: use
--num_iterations > 1 or steps_per_generation > gradient_accumulation_steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from rlplugins.integrations.trl import RLPluginsGRPOConfig, RLPluginsGRPOTrainer


@dataclass
class GRPOScriptArguments(ScriptArguments):
    reward_funcs: list[str] = field(default_factory=lambda: ["accuracy_reward"], metadata={
        "help": "reward functions from trl.rewards (accuracy_reward, think_format_reward, ...)"})


def parse(argv: list[str] | None = None) -> tuple[GRPOScriptArguments, RLPluginsGRPOConfig, ModelConfig]:
    parser = TrlParser((GRPOScriptArguments, RLPluginsGRPOConfig, ModelConfig))
    return parser.parse_args_and_config(argv)


def main(argv: list[str] | None = None) -> None:
    from datasets import load_dataset
    from trl import rewards

    script_args, training_args, model_args = parse(argv)
    reward_funcs = [getattr(rewards, name) for name in script_args.reward_funcs]
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    trainer = RLPluginsGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
