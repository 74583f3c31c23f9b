"""The registered losses against the core, and the core against veRL 0.9.1's built-ins for shared modes.

Every comparison calls the functions through veRL's own registry (``get_policy_loss_fn``) with veRL's call
contract: keyword arguments, a bool mask, an ``FSDPActorConfig`` whose ``global_batch_info`` is filled as
``ppo_loss`` fills it, and optional ``rollout_is_weights``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn
from verl.workers.config import FSDPActorConfig, PolicyLossConfig

import rlplugins.integrations.verl as adapter
from rlplugins.losses import (
    AGG_MODES,
    get_policy_loss,
    list_policy_losses,
    CispoConfig,
    GspoConfig,
    MaspoConfig,
    PgConfig,
    PpoClipConfig,
    SapoConfig,
    compute_policy_loss,
)

adapter.register_policy_losses()
from rlplugins.integrations.verl.config import MaspoPolicyLossConfig  # noqa: E402

OUR_NAMES = tuple(adapter.VERL_POLICY_LOSSES)


def actor_config(policy_loss=None, **kw) -> FSDPActorConfig:
    """An actor config as the worker builds it (rollout_n is MISSING in the dataclass: pass it by hand)."""
    base = dict(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=2)
    base.update(kw)
    if policy_loss is not None:
        base["policy_loss"] = policy_loss
    return FSDPActorConfig(**base)


@st.composite
def batches(draw, max_b: int = 4, max_t: int = 7):
    """Random veRL micro-batch: log-probs near the old ones, GRPO-style per-sequence advantages, bool mask."""
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 4 - 0.01
    spread = draw(st.sampled_from([0.0, 0.05, 0.5, 2.0]))
    new = old + spread * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).clone()
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = max(int(lengths[0]), 1)  # at least one valid token (veRL gives NaN for an all-masked call)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    # masked positions hold garbage, as padded positions do
    old = torch.where(mask, old, torch.full_like(old, -7.0))
    weights = (0.5 + torch.rand(b, t, generator=g, dtype=torch.float64)) if draw(st.booleans()) else None
    mode = draw(st.sampled_from(AGG_MODES))
    n_tok, n_seq = int(mask.sum()), int((mask.sum(-1) > 0).sum())
    gbi = draw(
        st.sampled_from(
            [
                {},
                # as ppo_loss writes it: counts of the whole mini-batch across ranks (here: this batch x 3)
                {"dp_size": 2, "batch_num_tokens": 3 * n_tok, "global_batch_size": 3 * n_seq, "loss_scale_factor": None},
                {"dp_size": 1, "batch_num_tokens": n_tok, "global_batch_size": n_seq, "loss_scale_factor": 7},
            ]
        )
    )
    return dict(old=old, new=new, adv=adv, mask=mask, weights=weights, mode=mode, gbi=gbi)


def call_verl(name: str, data: dict, config: FSDPActorConfig, mode: str | None = None):
    """One call through veRL's registry, exactly as ppo_loss makes it; returns (loss, grad wrt log_prob, metrics)."""
    config.global_batch_info.clear()
    config.global_batch_info.update(data["gbi"])
    log_prob = data["new"].clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn(name)(
        old_log_prob=data["old"],
        log_prob=log_prob,
        advantages=data["adv"],
        response_mask=data["mask"],
        loss_agg_mode=mode or data["mode"],
        config=config,
        rollout_is_weights=data["weights"],
    )
    loss.backward()
    return loss.detach(), log_prob.grad, metrics


def call_core(name: str, data: dict, core_config, mode: str | None = None):
    log_prob = data["new"].clone().requires_grad_(True)
    loss, metrics = compute_policy_loss(
        name,
        log_prob=log_prob,
        old_log_prob=data["old"],
        advantages=data["adv"],
        response_mask=data["mask"],
        loss_agg_mode=mode or data["mode"],
        config=core_config,
        rollout_is_weights=data["weights"],
        global_batch_info={k: v for k, v in data["gbi"].items() if v is not None},
    )
    loss.backward()
    return loss.detach(), log_prob.grad, metrics


def assert_close(a, b, what: str):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------------------------- registration


def test_our_names_are_registered_and_do_not_shadow_verl():
    builtins = {"vanilla", "dppo_tv", "dppo_kl", "gspo", "sapo", "gpg", "clip_cov", "kl_cov", "geo_mean", "dro",
                "cispo", "bypass_mode"}
    assert builtins <= set(POLICY_LOSS_REGISTRY)  # veRL's own losses are all still there ...
    for name in OUR_NAMES:  # ... and ours sit beside them, as our functions
        assert POLICY_LOSS_REGISTRY[name] is adapter.VERL_POLICY_LOSSES[name][0]
    assert not builtins & set(OUR_NAMES)
    assert POLICY_LOSS_REGISTRY["sapo"].__module__ == "verl.trainer.ppo.core_algos"


def test_registration_is_idempotent():
    before = dict(POLICY_LOSS_REGISTRY)
    assert adapter.register_policy_losses() == list(OUR_NAMES)
    assert adapter.register_policy_losses() == list(OUR_NAMES)
    assert POLICY_LOSS_REGISTRY == before


def test_registration_refuses_to_overwrite_a_foreign_loss(monkeypatch):
    def someone_elses_maspo(**kwargs):  # e.g. a future veRL built-in of the same name
        raise AssertionError("must not be called")

    monkeypatch.setitem(POLICY_LOSS_REGISTRY, "maspo", someone_elses_maspo)
    with pytest.raises(RuntimeError, match="already registers a policy loss named 'maspo'"):
        adapter.register_policy_losses()
    assert POLICY_LOSS_REGISTRY["maspo"] is someone_elses_maspo


def test_names_follow_one_rule_generated_from_the_core_registry():
    core = list_policy_losses()
    assert set(OUR_NAMES) == {f"rlp_{name}" for name in core} | {"maspo"}
    assert {"maspo", "rlp_sapo", "rlp_ppo_clip"} <= set(POLICY_LOSS_REGISTRY)  # the names released first
    assert adapter.VERL_POLICY_LOSSES["maspo"][1] == "maspo"  # the alias runs the same core loss as rlp_maspo
    assert POLICY_LOSS_REGISTRY["maspo"].__name__ == "maspo_policy_loss"
    for name in core:
        fn, core_name, _ = adapter.VERL_POLICY_LOSSES[f"rlp_{name}"]
        assert core_name == name and get_policy_loss_fn(f"rlp_{name}") is fn
    # one generated wrapper, no hand-written ones: every entry runs make_policy_loss's code
    generated = adapter.make_policy_loss("pg").__code__
    assert all(fn.__code__ is generated for fn, _, _ in adapter.VERL_POLICY_LOSSES.values())


# actor-level veRL flags, and the core field each one carries under the naming rule's parameter mapping
_ACTOR_VALUES = {"clip_ratio_low": 0.15, "clip_ratio_high": 0.3, "tau_pos": 0.7, "tau_neg": 1.3, "clip_ratio_c": 2.5}
_FIELD_FROM_FLAG = {"eps_low": "clip_ratio_low", "eps_high": "clip_ratio_high", "tau_pos": "tau_pos",
                    "tau_neg": "tau_neg"}


@pytest.mark.parametrize("core_name", list_policy_losses())
@settings(max_examples=15, deadline=None)
@given(data=batches())
def test_every_core_loss_through_veRLs_registry_equals_the_core(core_name, data):
    spec = get_policy_loss(core_name)
    expected = spec.config_cls(**{f: _ACTOR_VALUES[flag] for f, flag in _FIELD_FROM_FLAG.items()
                                  if f in spec.config_cls.field_names()})
    assert expected.to_dict().get("dual_clip") == spec.config_cls().to_dict().get("dual_clip")  # clip_ratio_c unused
    loss, grad, metrics = call_verl(f"rlp_{core_name}", data, actor_config(**_ACTOR_VALUES))
    ref_loss, ref_grad, ref_metrics = call_core(core_name, data, expected)
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")
    assert metrics == {f"actor/{k}": v for k, v in ref_metrics.items()}


def test_a_loss_registered_in_the_core_later_is_reachable_after_registering_again(monkeypatch):
    from rlplugins.losses import registry
    from verl.trainer.ppo import core_algos

    import rlplugins.integrations.verl.losses as losses

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(losses, "VERL_POLICY_LOSSES", dict(losses.VERL_POLICY_LOSSES))
    monkeypatch.setattr(core_algos, "POLICY_LOSS_REGISTRY", dict(core_algos.POLICY_LOSS_REGISTRY))
    pg = registry._REGISTRY["pg"]
    registry.register_policy_loss("my_pg", config_cls=pg.config_cls)(pg.fn)
    assert "rlp_my_pg" in losses.register_policy_losses()
    data = dict(old=torch.full((2, 3), -1.0), new=torch.full((2, 3), -0.9), adv=torch.ones(2, 3),
                mask=torch.ones(2, 3, dtype=torch.bool), weights=None, gbi={}, mode="token-mean")
    loss, _, _ = call_verl("rlp_my_pg", data, actor_config())
    assert_close(loss, call_core("pg", data, PgConfig())[0], "rlp_my_pg")


# ------------------------------------------------------------------------------------- ours == core


@given(data=batches(), alpha=st.sampled_from([0.0, 0.3, 0.5]), variant=st.sampled_from(["official", "paper"]))
def test_maspo_equals_the_core_with_the_configured_fields(data, alpha, variant):
    pl = MaspoPolicyLossConfig(alpha=alpha, variant=variant, beta_neg=0.05, dual_clip=3.0)
    loss, grad, metrics = call_verl("maspo", data, actor_config(pl))
    core = MaspoConfig(alpha=alpha, variant=variant, beta_neg=0.05, dual_clip=3.0)
    ref_loss, ref_grad, ref_metrics = call_core("maspo", data, core)
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")
    assert metrics == {f"actor/{k}": v for k, v in ref_metrics.items()}


@given(data=batches())
def test_maspo_with_veRLs_default_policy_loss_config_uses_core_defaults(data):
    # the entry-point route: loss_mode=maspo on veRL's own PolicyLossConfig (no MASPO fields declared)
    loss, grad, _ = call_verl("maspo", data, actor_config(PolicyLossConfig(loss_mode="maspo")))
    ref_loss, ref_grad, _ = call_core("maspo", data, MaspoConfig())
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")


@given(data=batches(), tau=st.sampled_from([(1.0, 1.05), (0.5, 2.0)]))
def test_rlp_sapo_equals_core_sapo_with_the_actor_temperatures(data, tau):
    loss, grad, metrics = call_verl("rlp_sapo", data, actor_config(tau_pos=tau[0], tau_neg=tau[1]))
    ref_loss, ref_grad, ref_metrics = call_core("sapo", data, SapoConfig(tau_pos=tau[0], tau_neg=tau[1]))
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")
    assert metrics["actor/gate_mean"] == ref_metrics["gate_mean"]


@given(data=batches(), clip=st.sampled_from([(0.2, 0.2), (0.2, 0.28), (0.1, 0.4)]))
def test_rlp_ppo_clip_equals_core_ppo_clip_without_dual_clip(data, clip):
    cfg = actor_config(clip_ratio_low=clip[0], clip_ratio_high=clip[1], clip_ratio_c=3.0)
    loss, grad, _ = call_verl("rlp_ppo_clip", data, cfg)
    ref_loss, ref_grad, _ = call_core("ppo_clip", data, PpoClipConfig(eps_low=clip[0], eps_high=clip[1]))
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")


# ------------------------------------------------------------------------------------- core == veRL built-ins


def _shared_metrics(verl_metrics: dict, core_metrics: dict, keys=("ppo_kl", "pg_clipfrac", "pg_clipfrac_lower")):
    for key in keys:
        # veRL computes the fractions in float32 (.float()); the core keeps float64 inputs in float64
        assert verl_metrics[f"actor/{key}"] == pytest.approx(core_metrics[key], rel=1e-6, abs=1e-9), key


@given(data=batches(), clip=st.sampled_from([(0.2, 0.2), (0.2, 0.28)]), c=st.sampled_from([3.0, 1.5]))
def test_verl_vanilla_equals_core_ppo_clip_with_dual_clip(data, clip, c):
    cfg = actor_config(clip_ratio_low=clip[0], clip_ratio_high=clip[1], clip_ratio_c=c)
    loss, grad, metrics = call_verl("vanilla", data, cfg)
    ref_loss, ref_grad, ref_metrics = call_core(
        "ppo_clip", data, PpoClipConfig(eps_low=clip[0], eps_high=clip[1], dual_clip=c)
    )
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")
    _shared_metrics(metrics, ref_metrics)


@given(data=batches(), tau=st.sampled_from([(1.0, 1.05), (0.5, 2.0)]))
def test_verl_sapo_equals_rlp_sapo_under_seq_mean_token_mean(data, tau):
    cfg = actor_config(tau_pos=tau[0], tau_neg=tau[1])
    loss, grad, metrics = call_verl("sapo", data, cfg, mode="seq-mean-token-mean")
    ours, our_grad, our_metrics = call_verl("rlp_sapo", data, cfg, mode="seq-mean-token-mean")
    assert_close(loss, ours, "loss")
    assert_close(grad, our_grad, "grad")
    assert metrics["actor/ppo_kl"] == pytest.approx(our_metrics["actor/ppo_kl"], rel=1e-9, abs=1e-12)


def test_verl_sapo_ignores_loss_agg_mode_and_rlp_sapo_honours_it():
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 6, generator=g, dtype=torch.float64) - 0.1
    data = dict(
        old=old, new=old + 0.3 * torch.randn(3, 6, generator=g, dtype=torch.float64),
        adv=torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64).expand(3, 6).clone(),
        mask=torch.arange(6)[None, :] < torch.tensor([[6], [2], [4]]), weights=None, gbi={},
    )
    cfg = actor_config()
    verl_tm, _, _ = call_verl("sapo", data, cfg, mode="token-mean")
    verl_sm, _, _ = call_verl("sapo", data, cfg, mode="seq-mean-token-mean")
    ours_tm, _, _ = call_verl("rlp_sapo", data, cfg, mode="token-mean")
    assert_close(verl_tm, verl_sm, "veRL sapo forces seq-mean-token-mean")
    assert not torch.allclose(ours_tm, verl_tm)  # unequal lengths: token-mean differs from seq-mean
    core_tm, _, _ = call_core("sapo", data, SapoConfig(), mode="token-mean")
    assert_close(ours_tm, core_tm, "rlp_sapo token-mean")


@given(data=batches(), clip=st.sampled_from([(0.2, 0.2), (0.2, 0.28), (1.0, 4.0)]))
def test_verl_cispo_equals_core_cispo(data, clip):
    cfg = actor_config(clip_ratio_low=clip[0], clip_ratio_high=clip[1])
    loss, grad, metrics = call_verl("cispo", data, cfg)
    ref_loss, ref_grad, ref_metrics = call_core("cispo", data, CispoConfig(eps_low=clip[0], eps_high=clip[1]))
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")
    _shared_metrics(metrics, ref_metrics, keys=("ppo_kl", "pg_clipfrac"))


@given(data=batches(), clip=st.sampled_from([(3e-4, 4e-4), (0.2, 0.2)]))
def test_verl_gspo_equals_core_gspo(data, clip):
    cfg = actor_config(clip_ratio_low=clip[0], clip_ratio_high=clip[1])
    loss, grad, metrics = call_verl("gspo", data, cfg)
    ref_loss, ref_grad, ref_metrics = call_core("gspo", data, GspoConfig(eps_low=clip[0], eps_high=clip[1]))
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")
    _shared_metrics(metrics, ref_metrics, keys=("ppo_kl",))


@given(data=batches())
def test_verl_gpg_equals_core_pg(data):
    loss, grad, _ = call_verl("gpg", data, actor_config())
    ref_loss, ref_grad, _ = call_core("pg", data, PgConfig())
    assert_close(loss, ref_loss, "loss")
    assert_close(grad, ref_grad, "grad")


# ------------------------------------------------------------------------------------- contract details


def test_global_batch_info_scales_the_loss_as_agg_loss_does():
    """Two micro-batches with global counts sum to the loss of the whole mini-batch (what backward() sums)."""
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 5, generator=g, dtype=torch.float64) - 0.1
    new = old + 0.2 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 1, generator=g, dtype=torch.float64).expand(4, 5).clone()
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [2], [4], [1]])
    whole = dict(old=old, new=new, adv=adv, mask=mask, weights=None, gbi={})
    cfg = actor_config(MaspoPolicyLossConfig(alpha=0.5))
    for mode in AGG_MODES:
        full, _, _ = call_verl("maspo", whole, cfg, mode=mode)
        gbi = {"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": 4, "loss_scale_factor": None}
        parts = []
        for sl in (slice(0, 2), slice(2, 4)):
            part = dict(old=old[sl], new=new[sl], adv=adv[sl], mask=mask[sl], weights=None, gbi=gbi)
            parts.append(call_verl("maspo", part, cfg, mode=mode)[0])
        assert_close(parts[0] + parts[1], full, mode)


def test_rollout_is_weights_multiply_the_per_token_loss():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(2, 4, generator=g, dtype=torch.float64) - 0.1
    base = dict(old=old, new=old + 0.1, adv=torch.ones(2, 4, dtype=torch.float64),
                mask=torch.ones(2, 4, dtype=torch.bool), gbi={}, mode="token-sum")
    for name in OUR_NAMES:
        plain, _, _ = call_verl(name, {**base, "weights": None}, actor_config())
        doubled, _, _ = call_verl(name, {**base, "weights": torch.full((2, 4), 2.0, dtype=torch.float64)}, actor_config())
        assert_close(doubled, 2 * plain, name)


def test_metrics_are_plain_floats_under_actor_prefix():
    data = dict(old=torch.full((2, 3), -1.0), new=torch.full((2, 3), -0.9), adv=torch.ones(2, 3),
                mask=torch.ones(2, 3, dtype=torch.bool), weights=None, gbi={}, mode="token-mean")
    _, _, metrics = call_verl("maspo", data, actor_config())
    assert {"actor/ppo_kl", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/gate_mean", "actor/damp_frac",
            "actor/quad_pos_frac", "actor/eff_weight_mean"} <= set(metrics)
    assert all(k.startswith("actor/") and type(v) is float for k, v in metrics.items())


def test_float32_inputs_as_the_engine_sends_them():
    data = dict(old=torch.full((2, 3), -1.0), new=torch.full((2, 3), -0.5), adv=torch.tensor([[1.0], [-1.0]]).expand(2, 3),
                mask=torch.tensor([[True, True, False], [True, False, False]]), weights=None, gbi={}, mode="token-mean")
    loss, grad, _ = call_verl("maspo", data, actor_config())
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.all(grad[~data["mask"]] == 0)


def test_nonfinite_tokens_are_masked_by_default_and_can_raise():
    old = torch.full((1, 3), -1.0)
    new = torch.tensor([[-0.9, float("nan"), -1.1]])
    data = dict(old=old, new=new, adv=torch.ones(1, 3), mask=torch.ones(1, 3, dtype=torch.bool), weights=None, gbi={},
                mode="token-mean")
    loss, _, metrics = call_verl("maspo", data, actor_config())
    assert torch.isfinite(loss) and metrics["actor/nonfinite_tokens"] == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        call_verl("maspo", data, actor_config(MaspoPolicyLossConfig(on_nonfinite="raise")))
