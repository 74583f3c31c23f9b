"""RLPluginsGRPOTrainer through TRL's real ``GRPOTrainer.train()`` (tiny Qwen2, CPU, num_iterations=2 so that the
ratio is not 1 on the second step).

1. Our ``_compute_loss`` against TRL's own branch on the same model and inputs, at every micro-step of a real
   run: ppo_clip vs grpo/bnpo/dr_grpo/dapo, rlp_sapo vs sapo, rlp_cispo vs cispo, with KL (+ bias correction),
   the entropy mask and bonus, the off-policy mask and an injected vLLM importance-sampling ratio switched on
   across the cases. Loss, every parameter gradient and every TRL metric must agree.
2. Every rlplugins loss: the trainer's loss equals ``compute_policy_loss`` with the aggregation TRL's normaliser
   implies (written out independently here), gradients included.
3. A TRL loss type through RLPluginsGRPOTrainer trains bit for bit like GRPOTrainer.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from rlplugins.integrations.trl.grpo import RLPluginsGRPOConfig, RLPluginsGRPOTrainer
from rlplugins.integrations.trl.tiny import prompt_dataset, target_word_reward, tiny_tokenizer
from rlplugins.losses import compute_policy_loss, list_policy_losses
from trl import GRPOConfig, GRPOTrainer

TIMING_KEYS = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
RESULTS_PATH = os.environ.get("RLPLUGINS_TRL_EXACTNESS_JSON")  # optional: write the measured differences here


def _args(tmp_path, cls=RLPluginsGRPOConfig, **overrides):
    base = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=4,
                gradient_accumulation_steps=2, max_completion_length=6, num_iterations=2, max_steps=2,
                logging_steps=1, report_to=[], learning_rate=1e-2, save_strategy="no", seed=0,
                disable_tqdm=True)
    base.update(overrides)
    return cls(**base)


def _new_entries(metrics, before):
    return {k: list(v[before.get(k, 0):]) for k, v in metrics.items() if len(v) > before.get(k, 0)}


def _drop_entries(metrics, before):
    for k in list(metrics):
        del metrics[k][before.get(k, 0):]


def _grads(loss, params, retain):
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _compare(ours, other, model):
    """Loss and gradient differences of two scalar losses of ``model`` (``ours`` keeps its graph for backward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    g_ours, g_other = _grads(ours, params, retain=True), _grads(other, params, retain=False)
    return {
        "loss": float(ours.detach()),
        "loss_diff": float((ours.detach() - other.detach()).abs()),
        "grad_diff": max(float((a - b).abs().max()) for a, b in zip(g_ours, g_other)),
        "grad_scale": max(float(b.abs().max()) for b in g_other),
    }


def _same_controller(a, b):
    (coef_a, last_a, stats_a), (coef_b, last_b, stats_b) = a, b
    same_stats = (stats_a is None and stats_b is None) or (
        stats_a is not None and stats_b is not None and torch.allclose(stats_a, stats_b, rtol=1e-6))
    return coef_a == coef_b and (last_a == last_b or math.isclose(last_a, last_b, rel_tol=1e-6)) and same_stats


class TwinProbe(RLPluginsGRPOTrainer):
    """At every micro-step: our loss and TRL's ``reference_loss_type`` on the same model and inputs."""

    reference_loss_type = "grpo"
    inject_is_ratio = False

    def _entropy_controller(self):
        stats = self._entropy_window_stats
        return self.entropy_coef, self._last_world_entropy, None if stats is None else stats.clone()

    def _set_entropy_controller(self, state):
        self.entropy_coef, self._last_world_entropy, stats = state
        self._entropy_window_stats = None if stats is None else stats.clone()

    def _compute_loss(self, model, inputs):
        if self.inject_is_ratio:
            g = torch.Generator().manual_seed(1000 + self._step)
            inputs = dict(inputs)
            inputs["importance_sampling_ratio"] = 0.5 + torch.rand(inputs["completion_ids"].shape, generator=g)
            self.use_vllm = self.vllm_importance_sampling_correction = True
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        before = {k: len(v) for k, v in metrics.items()}
        controller = self._entropy_controller()  # the adaptive entropy state both paths update
        ours = super()._compute_loss(model, inputs)
        ours_metrics = _new_entries(metrics, before)
        ours_controller = self._entropy_controller()
        self._set_entropy_controller(controller)
        mid = {k: len(v) for k, v in metrics.items()}
        saved = self.loss_type
        self.loss_type = self.reference_loss_type
        try:
            reference = GRPOTrainer._compute_loss(self, model, inputs)
        finally:
            self.loss_type = saved
            self.use_vllm = False
        reference_metrics = _new_entries(metrics, mid)
        _drop_entries(metrics, mid)
        assert _same_controller(self._entropy_controller(), ours_controller)
        self._set_entropy_controller(ours_controller)
        self.records.append({
            **_compare(ours, reference, model),
            "old_logps": "old_per_token_logps" in inputs,
            "ours_metrics": ours_metrics,
            "reference_metrics": reference_metrics,
        })
        return ours


# (our loss_type, TRL's loss_type, config overrides). TRL's epsilon/epsilon_high/sapo temperatures are set to the
# values our loss fields hold, so the two branches compute the same objective.
TWIN_CASES = {
    "grpo": ("ppo_clip", "grpo", dict(loss_normalizer="grpo", beta=0.04, entropy_coef=0.01, inject_is=True)),
    "bnpo": ("ppo_clip", "bnpo", dict(loss_normalizer="bnpo", top_entropy_quantile=0.5,
                                      off_policy_mask_threshold=0.0)),
    "dr_grpo": ("ppo_clip", "dr_grpo", dict(loss_normalizer="dr_grpo", beta=0.02)),
    "dapo": ("clip_higher", "dapo", dict(loss_normalizer="dapo", epsilon_high=0.28, beta=0.04,
                                         use_bias_correction_kl=True, inject_is=True)),
    "sapo": ("rlp_sapo", "sapo", dict(loss_normalizer="grpo", entropy_coef=0.01)),
    "dapo_moe": ("ppo_clip", "dapo", dict(loss_normalizer="dapo", moe=True, use_adaptive_entropy=True,
                                          entropy_target=10.0)),
    "cispo": ("rlp_cispo", "cispo", dict(loss_normalizer="dapo", cispo_eps_low=1.0, cispo_eps_high=4.0,
                                         epsilon_high=5.0, top_entropy_quantile=0.8, inject_is=True)),
}


def _record_results(name, payload):
    if not RESULTS_PATH:
        return
    data = {}
    if os.path.exists(RESULTS_PATH):
        with open(RESULTS_PATH) as fh:
            data = json.load(fh)
    data[name] = payload
    with open(RESULTS_PATH, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)


@pytest.mark.parametrize("case", sorted(TWIN_CASES))
def test_matches_trl_branch_through_train(case, tiny_model_dir, tiny_moe_dir, tmp_path):
    ours_type, trl_type, overrides = TWIN_CASES[case]
    overrides = dict(overrides)
    inject = overrides.pop("inject_is", False)
    moe = overrides.pop("moe", False)
    args = _args(tmp_path, loss_type=ours_type, **overrides)
    trainer = TwinProbe(model=tiny_moe_dir if moe else tiny_model_dir, reward_funcs=target_word_reward, args=args,
                        train_dataset=prompt_dataset(8), processing_class=tiny_tokenizer())
    trainer.reference_loss_type = trl_type
    trainer.inject_is_ratio = inject
    trainer.records = []
    trainer.train()

    records = trainer.records
    assert len(records) == 4  # 2 optimizer steps x 2 micro-batches
    assert any(r["old_logps"] for r in records)
    # num_iterations=2: the second optimizer step reuses the rollout, so the ratio moved away from 1.
    assert max(r["ours_metrics"]["rlplugins/ratio_max"][0] for r in records) > 1.0 + 1e-3
    assert max(r["grad_scale"] for r in records) > 0  # the gradients compared are not vacuous
    metric_diff = 0.0
    for r in records:
        expected_keys = set(r["reference_metrics"]) - {"cispo_clip_ratio"}
        assert expected_keys <= set(r["ours_metrics"]), expected_keys - set(r["ours_metrics"])
        for key in expected_keys:
            a, b = r["ours_metrics"][key], r["reference_metrics"][key]
            assert len(a) == len(b), key
            for x, y in zip(a, b):
                assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (key, x, y)
                metric_diff = max(metric_diff, abs(x - y))
        assert r["loss_diff"] <= 1e-6 * max(1.0, abs(r["loss"])), r
        assert r["grad_diff"] <= 1e-5 * max(1.0, r["grad_scale"]), r
    if trl_type == "cispo":  # TRL's own metric for cispo counts the tokens above the cap with A > 0
        for r in records:
            assert math.isclose(r["ours_metrics"]["clip_ratio/high_mean"][0],
                                r["reference_metrics"]["cispo_clip_ratio"][0], abs_tol=1e-7)
    # Sanity: the cases that switch a TRL feature on really exercised it.
    keys = set().union(*(r["reference_metrics"] for r in records))
    if overrides.get("beta"):
        assert "kl" in keys
    if overrides.get("entropy_coef") or overrides.get("use_adaptive_entropy"):
        assert "policy_loss" in keys and "entropy_coef" in keys
    if moe:
        assert "aux_loss" in keys and trainer.aux_loss_enabled
    _record_results(f"{ours_type} vs trl {trl_type}", {
        "loss_max_abs_diff": max(r["loss_diff"] for r in records),
        "grad_max_abs_diff": max(r["grad_diff"] for r in records),
        "metric_max_abs_diff": metric_diff,
        "features": sorted(k for k in overrides if k not in ("loss_normalizer",))
        + (["vllm_is_ratio"] if inject else []) + (["moe_aux_loss"] if moe else []),
    })


class CoreProbe(RLPluginsGRPOTrainer):
    """The trainer's loss against ``compute_policy_loss`` + TRL's normaliser, written out independently."""

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        lp, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                           inputs["completion_ids"].size(1))
        old = inputs.get("old_per_token_logps")
        old = lp.detach() if old is None else old
        adv = inputs["advantages"].unsqueeze(1).expand_as(lp)
        mask = inputs["completion_mask"]
        batch, accumulation = lp.size(0), self.current_gradient_accumulation_steps
        normalizer = self.args.loss_normalizer

        def core(mode, **info):
            value, _ = compute_policy_loss(self.rlplugins_loss, log_prob=lp, old_log_prob=old, advantages=adv,
                                           response_mask=mask, loss_agg_mode=mode,
                                           config=self.rlplugins_loss_config, global_batch_info=info or None)
            return value

        if normalizer == "dapo":  # global tokens of the generation batch, rescaled to one accumulation window
            expected = core("token-sum") / (inputs["num_items_in_batch"] * accumulation / self.args.steps_per_generation)
        elif normalizer == "bnpo":
            expected = core("token-mean") / accumulation
        elif normalizer == "dr_grpo":
            expected = core("seq-mean-token-sum-norm", global_batch_size=batch,
                            loss_scale_factor=self.max_completion_length) / accumulation
        elif normalizer == "grpo":
            expected = core("seq-mean-token-mean", global_batch_size=batch) / accumulation
        else:
            assert normalizer == "luspo"
            expected = core("seq-mean-token-sum", global_batch_size=batch) / accumulation
        self.records.append({
            **_compare(loss, expected, model),
            "ratio_max": self._metrics["train"]["rlplugins/ratio_max"][-1],
        })
        return loss


NORMALIZER_CYCLE = ("dapo", "grpo", "bnpo", "dr_grpo", "luspo")
LOSS_CASES = [(("rlp_" + n) if n in ("sapo", "cispo") else n, NORMALIZER_CYCLE[i % len(NORMALIZER_CYCLE)])
              for i, n in enumerate(list_policy_losses())]


@pytest.mark.parametrize("loss_type,normalizer", LOSS_CASES)
def test_every_loss_equals_compute_policy_loss(loss_type, normalizer, tiny_model_dir, tmp_path):
    args = _args(tmp_path, loss_type=loss_type, loss_normalizer=normalizer)
    trainer = CoreProbe(model=tiny_model_dir, reward_funcs=target_word_reward, args=args,
                        train_dataset=prompt_dataset(8), processing_class=tiny_tokenizer())
    trainer.records = []
    trainer.train()
    records = trainer.records
    assert len(records) == 4
    assert max(r["ratio_max"] for r in records) > 1.0 + 1e-3
    for r in records:
        assert r["loss_diff"] <= 1e-6 * max(1.0, abs(r["loss"])), r
        assert r["grad_diff"] <= 1e-5 * max(1.0, r["grad_scale"]), r
    assert any(r["grad_scale"] > 0 for r in records)
    _record_results(f"{loss_type} ({normalizer}) vs compute_policy_loss", {
        "loss_max_abs_diff": max(r["loss_diff"] for r in records),
        "grad_max_abs_diff": max(r["grad_diff"] for r in records),
    })


def _initial_params(path):
    from transformers import AutoModelForCausalLM

    return [p.detach() for p in AutoModelForCausalLM.from_pretrained(path).parameters()]


def _history(trainer):
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in trainer.state.log_history]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "bnpo", "sapo", "cispo"])
def test_trl_loss_type_trains_exactly_like_grpo_trainer(loss_type, tiny_model_dir, tmp_path):
    common = dict(loss_type=loss_type, beta=0.04, entropy_coef=0.01)
    runs = []
    for name, cls, trainer_cls in (("trl", GRPOConfig, GRPOTrainer), ("ours", RLPluginsGRPOConfig,
                                                                        RLPluginsGRPOTrainer)):
        trainer = trainer_cls(model=tiny_model_dir, reward_funcs=target_word_reward,
                              args=_args(tmp_path / name, cls=cls, **common), train_dataset=prompt_dataset(8), processing_class=tiny_tokenizer())
        trainer.train()
        runs.append((_history(trainer), [p.detach().clone() for p in trainer.model.parameters()]))
    (h_trl, p_trl), (h_ours, p_ours) = runs
    assert h_ours == h_trl
    assert all(torch.equal(a, b) for a, b in zip(p_ours, p_trl))
    assert {"kl", "policy_loss", "entropy"} <= set(h_trl[0])
    assert not any(k.startswith("rlplugins/") for k in h_ours[0])
    assert any(not torch.equal(a, b) for a, b in zip(p_ours, _initial_params(tiny_model_dir)))  # it trained
