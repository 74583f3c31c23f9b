"""Hardening, kernel side: the Triton entry points (``token_logprobs``, ``gated_token_loss``,
``fused_policy_loss``) and the core's Triton backend reject exactly what the torch path rejects, with the same
messages (one copy of the checks: ``rlplugins.tensor_checks``; configs: the core dataclass's ``validate()``).
CPU tensors under TRITON_INTERPRET=1."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.kernels import fused_policy_loss, gated_token_loss, token_logprobs
from rlplugins.losses import MaspoConfig, PpoClipConfig, SapoConfig, logprobs_from_logits, policy_loss_from_logits

pytestmark = pytest.mark.interpreter


def _inputs(b=2, t=3, v=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(logits=torch.randn(b, t, v, generator=g), labels=torch.randint(0, v, (b, t), generator=g),
                old_log_prob=-torch.rand(b, t, generator=g), advantages=torch.randn(b, t, generator=g),
                response_mask=torch.ones(b, t, dtype=torch.bool))


def _fused(x, name="maspo", config=None, **kw):
    return fused_policy_loss(x["logits"], x["labels"], x["old_log_prob"], x["advantages"], x["response_mask"], name,
                             MaspoConfig() if config is None else config, **kw)


# 1: ignore_index at a valid position, on the fused kernel and the Triton composed path (gspo) -------------------
@settings(max_examples=6, deadline=None)
@given(i=st.integers(0, 1), j=st.integers(0, 2), fused=st.booleans())
def test_ignore_index_label_at_a_valid_position_is_rejected_on_the_triton_paths(i, j, fused):
    x = _inputs()
    x["labels"][i, j] = -100
    name = "maspo" if fused else "gspo"
    with pytest.raises(ValueError, match=rf"labels equals ignore_index=-100 at 1 position\(s\) that response_mask marks "
                                         rf"valid, first at index \({i}, {j}\)"):
        policy_loss_from_logits(name, backend="triton", **x)
    with pytest.raises(ValueError, match=rf"first at index \({i}, {j}\)"):
        _fused(x)


def test_narrow_and_complex_labels_are_rejected_by_the_kernels():
    x = _inputs()
    for dtype in (torch.uint8, torch.int16, torch.complex64):
        with pytest.raises(TypeError, match=r"labels must be an int64 or int32 tensor, got .*dtype torch\.(uint8|int16|complex64)"):
            _fused({**x, "labels": x["labels"].to(dtype)})
        with pytest.raises(TypeError, match="labels must be an int64 or int32 tensor"):
            token_logprobs(x["logits"], x["labels"].to(dtype))


# 5: negative importance weights ------------------------------------------------------------------------------
def test_triton_path_rejects_negative_rollout_is_weights():
    x = _inputs()
    w = torch.ones(2, 3)
    w[0, 1] = -0.5
    # The kernel returns per-token losses and takes no weights: the core multiplies and checks them, once.
    with pytest.raises(ValueError, match=r"rollout_is_weights must be >= 0 at valid positions"):
        policy_loss_from_logits("maspo", backend="triton", rollout_is_weights=w, **x)


# 6: overlapping memory with an in-place gradient ---------------------------------------------------------------
def test_kernels_refuse_inplace_gradients_into_overlapping_logits():
    x = _inputs()
    expanded = torch.randn(1, 3, 16).expand(2, 3, 16)
    with pytest.raises(ValueError, match="logits has overlapping memory"):
        _fused({**x, "logits": expanded}, inplace_backward=True)
    with pytest.raises(ValueError, match="logits has overlapping memory"):
        token_logprobs(expanded, x["labels"], inplace_backward=True)
    with pytest.raises(ValueError, match="logits has overlapping memory"):
        policy_loss_from_logits("maspo", backend="triton", inplace_backward=True, **{**x, "logits": expanded})


# 7: kernel entry points validate like the core --------------------------------------------------------------------
@pytest.mark.parametrize("bad", [2.0, math.nan, -1.0, 0.5])
def test_gated_token_loss_mask_accepts_only_bool_or_0_1(bad):
    x = torch.full((4,), -0.5)
    mask = torch.ones(4)
    mask[2] = bad
    with pytest.raises(ValueError, match=r"response_mask must contain only 0 and 1 \(or be bool\); found 1 other value"):
        gated_token_loss(x, x, x, "pg", response_mask=mask)
    with pytest.raises(ValueError, match=r"response_mask must contain only 0 and 1"):
        _fused({**_inputs(), "response_mask": mask[:3].expand(2, 3)})


@pytest.mark.parametrize("loss,config", [("maspo", {"alpha": -5.0}), ("ppo_clip", {"eps_low": 5.0}),
                                         ("sapo", {"tau_pos": 0.0}), ("sapo", {"tau_pos": 1.0})])
def test_kernels_refuse_unvalidated_mappings_and_point_to_make_config(loss, config):
    x = torch.full((3,), -0.5)
    with pytest.raises(TypeError, match=rf"loss '{loss}' needs a validated config object .* "
                                        rf"rlplugins.losses.make_config\('{loss}', \{{...\}}\)"):
        gated_token_loss(x, x, x, loss, config)


@pytest.mark.parametrize("cfg,field", [(MaspoConfig(), "alpha"), (PpoClipConfig(), "eps_low"), (SapoConfig(), "tau_pos")])
def test_kernels_revalidate_a_config_mutated_after_construction(cfg, field):
    cfg = dataclasses.replace(cfg)
    object.__setattr__(cfg, field, -5.0)  # bypasses the frozen dataclass's check
    x = torch.full((3,), -0.5)
    with pytest.raises(ValueError, match=rf"{type(cfg).__name__}.{field} must be in"):
        gated_token_loss(x, x, x, type(cfg).__name__.replace("Config", "").lower().replace("ppoclip", "ppo_clip"), cfg)


def test_kernels_name_meta_tensors():
    x = _inputs()
    with pytest.raises(ValueError, match="logits is a meta tensor"):
        token_logprobs(x["logits"].to("meta"), x["labels"])
    with pytest.raises(ValueError, match="log_prob is a meta tensor"):
        gated_token_loss(torch.zeros(3, device="meta"), torch.zeros(3), torch.zeros(3), "pg")


# 8: one behaviour for non-finite logit rows on both backends ----------------------------------------------------
@pytest.mark.parametrize("case", ["nan", "posinf", "all_neginf", "label_neginf"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nonfinite_logit_rows_raise_the_same_error_on_both_backends(case, backend):
    z = torch.randn(3, 16)
    labels = torch.tensor([0, 1, 2])
    if case == "nan":
        z[1, 4] = math.nan
    elif case == "posinf":
        z[1, 4] = math.inf
    elif case == "all_neginf":
        z[1] = -math.inf
    else:
        z[1, 1] = -math.inf
    with pytest.raises(ValueError, match=r"logits give a non-finite log-prob/entropy at 1 used row\(s\), first at index \(1,\)"):
        logprobs_from_logits(z, labels, return_entropy=True, backend=backend)
    out = logprobs_from_logits(z, torch.tensor([0, -100, 2]), return_entropy=True, backend=backend)
    assert torch.isfinite(out.log_prob).all() and torch.isfinite(out.entropy).all()


def test_fused_kernel_rejects_nan_logits_at_valid_rows():
    x = _inputs()
    x["logits"][1, 2, 5] = math.nan
    with pytest.raises(ValueError, match=r"logits give a non-finite log-prob/entropy .* first at index \(5,\)"):
        _fused(x)
    x["response_mask"][1, 2] = False
    assert torch.isfinite(_fused(x).token_loss).all()


# 9: temperature ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature,error", [(1e-39, ValueError), ("1.0", TypeError), (None, TypeError)])
def test_kernels_validate_temperature_like_the_core(temperature, error):
    x = _inputs()
    with pytest.raises(error, match="temperature must be a"):
        token_logprobs(x["logits"], x["labels"], temperature=temperature)
    with pytest.raises(error, match="temperature must be a"):
        _fused(x, temperature=temperature)


# 10: zero-length responses ------------------------------------------------------------------------------------------
# The kernels no longer aggregate: the core's agg_loss (tests/core/test_hardening.py) is the one copy.
