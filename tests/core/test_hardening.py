"""Hardening: every silent-wrong, NaN and late-failure path of the core found by the bad-input sweep now
raises a clear error naming the argument (or has one documented, tested behaviour). One test per class; hypothesis
where the class is a range. Kernel-side twins: tests/kernels/test_hardening.py."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.losses import (
    DPOConfig,
    MaspoConfig,
    SapoConfig,
    agg_loss,
    compute_policy_loss,
    logprobs_from_logits,
    policy_loss_from_logits,
)
from rlplugins.selection import PromptGroupSelector, PromptGroupSelectorConfig, SageConfig

REPO = Path(__file__).resolve().parents[2]


def _batch(b=2, t=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) - 0.1
    return dict(log_prob=(old + 0.1 * torch.randn(b, t, generator=g)).requires_grad_(True), old_log_prob=old,
                advantages=torch.randn(b, t, generator=g), response_mask=torch.ones(b, t, dtype=torch.bool))


def _logits_inputs(b=2, t=3, v=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(logits=torch.randn(b, t, v, generator=g), labels=torch.randint(0, v, (b, t), generator=g),
                old_log_prob=-torch.rand(b, t, generator=g), advantages=torch.randn(b, t, generator=g),
                response_mask=torch.ones(b, t, dtype=torch.bool))


# 1 -------------------------------------------------------------------------------------------- ignore_index labels
@settings(max_examples=15, deadline=None)
@given(i=st.integers(0, 1), j=st.integers(0, 2))
def test_ignore_index_label_at_a_valid_position_is_rejected(i, j):
    x = _logits_inputs()
    x["labels"][i, j] = -100
    with pytest.raises(ValueError, match=rf"labels equals ignore_index=-100 at 1 position\(s\) that response_mask marks "
                                         rf"valid, first at index \({i}, {j}\)"):
        policy_loss_from_logits("maspo", backend="torch", **x)
    x["response_mask"][i, j] = False  # masked out: the label is not read
    assert math.isfinite(policy_loss_from_logits("maspo", backend="torch", **x).loss.item())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
def test_narrow_label_dtypes_are_rejected(dtype):
    x = _logits_inputs()
    x["labels"] = x["labels"].to(dtype)
    with pytest.raises(TypeError, match=r"labels must be an int64 or int32 tensor, got .*cannot hold ignore_index"):
        policy_loss_from_logits("maspo", backend="torch", **x)
    with pytest.raises(TypeError, match="labels must be an int64 or int32 tensor"):
        logprobs_from_logits(x["logits"], x["labels"], backend="torch")


# 2 -------------------------------------------------------------------------------------------- global_batch_info
_bad_counts = st.one_of(st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                        st.integers(max_value=-1))


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["batch_num_tokens", "global_batch_size"]), value=_bad_counts)
def test_negative_or_nonfinite_global_counts_are_rejected(key, value):
    mode = "token-mean" if key == "batch_num_tokens" else "seq-mean-token-mean"
    with pytest.raises(ValueError, match=rf"global_batch_info\['{key}'\] must be (finite|>= 0)"):
        compute_policy_loss("ppo_clip", loss_agg_mode=mode, global_batch_info={key: value}, **_batch())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 7))
def test_a_global_count_below_this_calls_own_count_is_rejected(n):
    # 8 valid tokens, 2 sequences: a global count (all micro-batches, all ranks) cannot be smaller.
    with pytest.raises(ValueError, match=rf"global_batch_info\['batch_num_tokens'\]={n} is smaller than the 8 valid"):
        compute_policy_loss("ppo_clip", global_batch_info={"batch_num_tokens": n}, **_batch())
    if n < 2:
        with pytest.raises(ValueError, match=r"'global_batch_size'\].* is smaller than the 2 sequences"):
            compute_policy_loss("ppo_clip", loss_agg_mode="seq-mean-token-sum",
                                global_batch_info={"global_batch_size": n}, **_batch())


def test_a_count_floor_of_nonzero_takes_prescaled_counts_but_not_zero():
    # OpenRLHF divides the step's counts by the accumulation steps: 3 < 8 local tokens is legitimate there.
    loss, _ = compute_policy_loss("ppo_clip", global_batch_info={"batch_num_tokens": 3}, count_floor="nonzero",
                                  **_batch())
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"\['batch_num_tokens'\]=0 while this call has 8 valid tokens"):
        compute_policy_loss("ppo_clip", global_batch_info={"batch_num_tokens": 0}, count_floor="nonzero", **_batch())
    with pytest.raises(ValueError, match=r"count_floor must be one of \('local', 'nonzero'\), got 'none'"):
        compute_policy_loss("ppo_clip", global_batch_info={"batch_num_tokens": 8}, count_floor="none", **_batch())


def test_an_all_masked_global_batch_may_count_zero():
    x = _batch()
    x["response_mask"] = torch.zeros_like(x["response_mask"])
    loss, _ = compute_policy_loss("ppo_clip", global_batch_info={"batch_num_tokens": 0}, **x)
    assert loss.item() == 0.0


@pytest.mark.parametrize("info,error,message", [
    ({"batch_num_tokens": 16, "dp_size": 2.7}, ValueError, r"global_batch_info\['dp_size'\] must be an int >= 1, got 2.7"),
    ({"batch_num_tokens": 16, "dp_size": True}, ValueError, r"\['dp_size'\] must be an int >= 1, got True"),
    ({"batch_num_tokens": 16, "dp_size": 0}, ValueError, r"\['dp_size'\] must be an int >= 1, got 0"),
    ({"batch_num_tokens": "16"}, TypeError, r"global_batch_info\['batch_num_tokens'\] must be a number, got str"),
    ({"batch_num_tokens": torch.ones(2)}, TypeError, r"must be a number or a one-element real tensor"),
    ({"loss_scale_factor": math.nan}, ValueError, r"global_batch_info\['loss_scale_factor'\] must be finite"),
    ({"loss_scale_factor": 0}, ValueError, r"global_batch_info\['loss_scale_factor'\] must be > 0"),
])
def test_global_batch_info_values_name_the_key(info, error, message):
    with pytest.raises(error, match=message):
        compute_policy_loss("ppo_clip", loss_agg_mode="seq-mean-token-sum-norm" if "loss_scale_factor" in info
                            else "token-mean", global_batch_info=info, **_batch())


def test_global_counts_as_tensors_still_work():
    x = _batch()
    a, _ = compute_policy_loss("ppo_clip", global_batch_info={"batch_num_tokens": torch.tensor(16.0), "dp_size": 2}, **x)
    b, _ = compute_policy_loss("ppo_clip", global_batch_info={"batch_num_tokens": 16, "dp_size": 2}, **x)
    assert a.item() == b.item()


# 5 -------------------------------------------------------------------------------------------- negative IS weights
@settings(max_examples=20, deadline=None)
@given(w=st.floats(max_value=-(2.0**-100), allow_infinity=False, width=32))
def test_negative_rollout_is_weights_are_rejected(w):
    x = _batch()
    weights = torch.ones(2, 4)
    weights[1, 2] = w
    with pytest.raises(ValueError, match=r"rollout_is_weights must be >= 0 at valid positions .* first at index \(1, 2\)"):
        compute_policy_loss("maspo", rollout_is_weights=weights, **x)
    x["response_mask"][1, 2] = False  # a masked position is never read
    compute_policy_loss("maspo", rollout_is_weights=weights, **x)


# 6 -------------------------------------------------------------------------------------------- overlapping logits
def test_inplace_backward_refuses_overlapping_logits():
    x = _logits_inputs()
    expanded = torch.randn(1, 3, 7).expand(2, 3, 7)  # both batch rows share memory
    with pytest.raises(ValueError, match=r"logits has overlapping memory .* inplace_backward=True"):
        policy_loss_from_logits("maspo", backend="torch", inplace_backward=True, **{**x, "logits": expanded})
    with pytest.raises(ValueError, match="overlapping memory"):
        logprobs_from_logits(torch.randn(7).expand(4, 7), torch.zeros(4, dtype=torch.long), inplace_backward=True,
                             backend="torch")
    # Strided but non-overlapping views (HF's logits[:, :-1]) and out-of-place gradients stay allowed.
    z = torch.randn(2, 4, 7)
    logprobs_from_logits(z[:, :-1], torch.zeros(2, 3, dtype=torch.long), inplace_backward=True, backend="torch")
    logprobs_from_logits(expanded, torch.zeros(2, 3, dtype=torch.long), backend="torch")


# 8: non-finite logit rows, one behaviour on both backends: tests/kernels/test_hardening.py (torch and triton)


# 9 -------------------------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("temperature,error,message", [
    (1e-39, ValueError, r"temperature must be a finite number >= 1e-06, got 1e-39"),
    (0.0, ValueError, r"temperature must be a finite number >= 1e-06"),
    (math.inf, ValueError, r"temperature must be a finite number >= 1e-06, got inf"),
    (10**400, ValueError, r"temperature must be a finite number"),
    ("1.0", TypeError, r"temperature must be a real number \(e.g. 1.0\), got str '1.0'"),
    (None, TypeError, r"temperature must be a real number \(e.g. 1.0\), got NoneType None"),
    (True, TypeError, r"temperature must be a real number"),
])
def test_temperature_is_validated_once_with_a_documented_range(temperature, error, message):
    x = _logits_inputs()
    with pytest.raises(error, match=message):
        policy_loss_from_logits("maspo", backend="torch", temperature=temperature, **x)
    with pytest.raises(error, match=message):
        logprobs_from_logits(x["logits"], x["labels"], temperature=temperature, backend="torch")


# 10 ------------------------------------------------------------------------------------------- zero-length responses
@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_zero_length_responses_give_zero_in_every_mode(mode):
    x = {k: v[:, :0] for k, v in _batch().items()}
    loss, metrics = compute_policy_loss("maspo", loss_agg_mode=mode, **x)
    assert loss.item() == 0.0 and metrics["valid_tokens"] == 0
    assert agg_loss(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool), mode).item() == 0.0


# 11 ------------------------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize("build,owner,wrong,right", [
    (lambda: MaspoConfig(alhpa=0.5), "MaspoConfig", "alhpa", "alpha"),
    (lambda: MaspoConfig().replace(sigma_bsae=2.0), "MaspoConfig", "sigma_bsae", "sigma_base"),
    (lambda: SapoConfig(tau_pso=1.0), "SapoConfig", "tau_pso", "tau_pos"),
    (lambda: SageConfig(selction_ratio=0.3), "SageConfig", "selction_ratio", "selection_ratio"),
    (lambda: DPOConfig(betta=0.1), "DPOConfig", "betta", "beta"),
    (lambda: PromptGroupSelectorConfig(histroy_size=3), "PromptGroupSelectorConfig", "histroy_size", "history_size"),
    (lambda: MaspoConfig.from_mapping({"alhpa": 0.5}), "MaspoConfig", "alhpa", "alpha"),
])
def test_misspelt_fields_get_the_same_did_you_mean_everywhere(build, owner, wrong, right):
    # Both TypeError (what Python raises for an unexpected keyword) and ValueError (the mapping paths' type).
    for error in (TypeError, ValueError):
        with pytest.raises(error, match=rf"^{owner} has no field '{wrong}'\. Did you mean '{right}'\? Valid fields: "):
            build()


def test_configs_still_copy_pickle_and_replace():
    import copy
    import pickle

    c = MaspoConfig(alpha=0.5)
    assert copy.deepcopy(c) == c == pickle.loads(pickle.dumps(c)) and c.replace(alpha=0.7).alpha == 0.7


# 12 ------------------------------------------------------------------------------------------- configs that give NaN
@pytest.mark.parametrize("build,message", [
    (lambda: SapoConfig(tau_pos=1e-38), r"SapoConfig.tau_pos must be in \[0.0001, inf\), got 1e-38"),
    (lambda: SapoConfig(tau_neg=5e-5), r"SapoConfig.tau_neg must be in \[0.0001, inf\)"),
    (lambda: MaspoConfig(sigma_base=1e-30), r"MaspoConfig.sigma_base must be in \[1e-06, inf\), got 1e-30"),
    (lambda: MaspoConfig(adv_low=1e-25), r"MaspoConfig.adv_low must be in \[1e-06, inf\)"),
])
def test_bounds_that_would_overflow_are_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


_envelope = st.floats(-1e18, 1e18, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(tau=st.floats(1e-4, 1e4), sigma_base=st.floats(1e-6, 10.0), adv_low=st.floats(1e-6, 1.0),
       adv=_envelope, old=st.floats(-1e4, 0.0, width=32), name=st.sampled_from(["sapo", "maspo", "maspo-paper"]))
def test_every_accepted_config_is_finite_on_ordinary_inputs(tau, sigma_base, adv_low, adv, old, name):
    """Within the float32 envelope (|A|, |logp| below ~1e19; docs/kernels.md#numerics), accepted configs never give
    NaN/inf, including tokens with ratio exactly 1 (the 0/0 of a vanishing MASPO width)."""
    if name == "sapo":
        cfg = SapoConfig(tau_pos=tau, tau_neg=tau)
    else:
        cfg = MaspoConfig(sigma_base=sigma_base, adv_low=adv_low, sigma_high=max(10.0, sigma_base),
                          variant="paper" if name == "maspo-paper" else "official", bilateral=True)
    olds = torch.tensor([[old, old, old]])
    lp = (olds + torch.tensor([[0.0, 1e-3, -1e-3]])).requires_grad_(True)  # ratio 1 and either side of it
    loss, _ = compute_policy_loss(name.split("-")[0], log_prob=lp, old_log_prob=olds,
                                  advantages=torch.full((1, 3), adv), response_mask=torch.ones(1, 3, dtype=torch.bool),
                                  loss_agg_mode="token-sum", config=cfg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()


# 13 ------------------------------------------------------------------------------------------- unhelpful messages
def test_meta_tensors_are_named():
    x = _batch()
    with pytest.raises(ValueError, match=r"log_prob is a meta tensor .* holds no data"):
        compute_policy_loss("maspo", **{**x, "log_prob": x["log_prob"].detach().to("meta")})
    y = _logits_inputs()
    with pytest.raises(ValueError, match=r"logits is a meta tensor"):
        policy_loss_from_logits("maspo", backend="torch", **{**y, "logits": y["logits"].to("meta")})
    with pytest.raises(ValueError, match=r"logits is a meta tensor"):
        logprobs_from_logits(y["logits"].to("meta"), y["labels"], backend="torch")


def test_labels_on_another_device_are_named_before_their_values_are_read():
    y = _logits_inputs()
    with pytest.raises(ValueError, match=r"^labels is on meta but logits is on cpu$"):
        policy_loss_from_logits("maspo", backend="torch", **{**y, "labels": y["labels"].to("meta")})
    with pytest.raises(ValueError, match=r"^labels is on meta but logits is on cpu$"):
        logprobs_from_logits(y["logits"], y["labels"].to("meta"), backend="torch")


def test_a_list_as_loss_name_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"policy loss name must be a str \(one of .*maspo.*\), got list \['maspo'\]"):
        compute_policy_loss(["maspo"], **_batch())


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_huge_ints_are_reported_as_not_finite(value):
    with pytest.raises(ValueError, match=r"^MaspoConfig.alpha must be finite, got an int of 401 digits \(beyond the float range\)$"):
        MaspoConfig(alpha=value)


def test_prompt_group_state_without_its_prompts_names_the_missing_keys():
    sel = PromptGroupSelector(PromptGroupSelectorConfig())
    state = sel.state_dict()
    del state["prompts"]
    with pytest.raises(ValueError, match=r"PromptGroupSelector state lacks key\(s\) prompts: pass the dict returned"):
        sel.load_state_dict(state)


# 17 ------------------------------------------------------------------------------------------- TRITON_INTERPRET
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_sets_triton_interpret_for_test_targets_only():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def seen_by(target: str) -> str:
        # `+` runs the probe under -n; a target-specific variable reaches the target's prerequisites.
        out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), "--eval",
                              'rlp-probe: ; +@echo "[$$TRITON_INTERPRET]"', "--eval", f"{target}: rlp-probe",
                              "-n", target], env=env, capture_output=True, text=True, timeout=60)
        return next(line for line in out.stdout.splitlines() if line.startswith("["))

    assert seen_by("test-core") == "[1]"
    assert seen_by("demo") == "[]" and seen_by("bench") == "[]"
