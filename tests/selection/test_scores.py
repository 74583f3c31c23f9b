"""Properties of the SAGE score, the stability filter and the curriculum helpers (docs/sage.md#our-reconstruction)."""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from rlplugins.selection import (
    SageConfig,
    implicit_margins,
    sage_scores,
    schedule_fraction,
    score_from_margin,
    temporal_unstable,
    tiers_from_difficulty,
)
from rlplugins.selection.curriculum import easiest_fraction_pool, static_level, tier_pool

any_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
margins = st.floats(-30, 30, allow_nan=False)
dampings = st.floats(0.0, 1.0)
VARIANTS = ("newton", "signal", "loss")


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _scores_of_u(u, cfg):
    """sage_scores fed with log-probs that produce the scaled margins u exactly (pc = u / beta, rest 0)."""
    u = _t(u)
    z = torch.zeros_like(u)
    return sage_scores(u / cfg.beta, z, z, z, cfg)


@given(vals=st.lists(st.tuples(any_finite, any_finite, any_finite, any_finite), min_size=1, max_size=16),
       damping=dampings, variant=st.sampled_from(VARIANTS))
def test_scores_finite_bounded_for_all_finite_inputs(vals, damping, variant):
    cols = [torch.tensor(c, dtype=torch.float64) for c in zip(*vals)]
    cfg = SageConfig(damping=damping, score_variant=variant)
    scores, stable = sage_scores(*cols, cfg)
    assert scores.dtype == torch.float64 and stable.dtype == torch.bool
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all()
    if variant == "newton" and damping > 0:
        assert (scores <= 1.0 / damping + 1e-9).all()  # B4: bounded by 1/delta
    # float32 inputs too (sums of large log-probs may overflow to inf, which must give score 0, not NaN)
    scores32, _ = sage_scores(*(c.float() for c in cols), cfg)
    assert torch.isfinite(scores32).all()


@given(u=margins, damping=dampings)
def test_newton_score_matches_direct_formula(u, damping):
    uc = max(-20.0, min(20.0, u))
    sig = 1 / (1 + math.exp(-uc))
    expected = (1 - sig) ** 2 / (sig * (1 - sig) + damping)
    got = score_from_margin(_t([u]), damping=damping).item()
    assert got == pytest.approx(expected, rel=1e-9)


@given(u=st.floats(-20, 20))
def test_undamped_score_is_newton_decrement_of_dpo_loss(u):
    # B3: lambda^2 = (dl/du)^2 / (d2l/du2) = exp(-u) for l(u) = -log sigma(u).
    x = torch.tensor(u, dtype=torch.float64, requires_grad=True)
    loss = -torch.nn.functional.logsigmoid(x)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (h,) = torch.autograd.grad(g, x)
    s = score_from_margin(_t([u]), damping=0.0).item()
    assert s == pytest.approx((g.item() ** 2) / h.item(), rel=1e-8)
    assert s == pytest.approx(math.exp(-u), rel=1e-8)


@given(u=st.floats(-10, 10), beta=st.floats(0.01, 1.0),
       j=st.lists(st.floats(-3, 3), min_size=2, max_size=5))
def test_gauss_newton_decrement_in_parameter_space_is_independent_of_jacobian(u, beta, j):
    # B3 [derived]: g = -beta s J, H = beta^2 c J J^T  =>  g^T H^+ g = s^2 / c for any J != 0.
    J = torch.tensor(j, dtype=torch.float64)
    assume(J.norm() > 1e-3)
    s = torch.sigmoid(torch.tensor(-u, dtype=torch.float64))
    c = torch.sigmoid(torch.tensor(u, dtype=torch.float64)) * s
    g = -beta * s * J
    H = beta**2 * c * torch.outer(J, J)
    dec = g @ torch.linalg.pinv(H, hermitian=True) @ g
    assert dec.item() == pytest.approx(score_from_margin(_t([u]), damping=0.0).item(), rel=1e-6)


@given(a=margins, b=margins, damping=dampings, variant=st.sampled_from(VARIANTS))
def test_score_strictly_decreasing_in_margin_inside_clip(a, b, damping, variant):
    # B4 [derived]: S is strictly decreasing in u for every delta >= 0 (so top-k by S = top-k by DPO loss).
    lo, hi = sorted((a, b))
    assume(hi - lo > 1e-6)
    s = score_from_margin(_t([lo, hi]), variant=variant, damping=damping)
    if hi <= 20.0 and lo >= -20.0:
        assert s[0] > s[1]
    else:
        assert s[0] >= s[1]  # beyond the clip the score is flat


@given(err=st.floats(-20, -0.5), triv=st.floats(0.5, 20), damping=dampings, variant=st.sampled_from(VARIANTS))
def test_confident_errors_outscore_boundary_and_trivial_pairs(err, triv, damping, variant):
    s = score_from_margin(_t([err, 0.0, triv]), variant=variant, damping=damping)
    assert s[0] > s[1] > s[2]


def test_score_reference_values():
    assert score_from_margin(_t([0.0])).item() == pytest.approx(0.25 / 0.30)  # S(0) = 0.833 (B4)
    assert score_from_margin(_t([-1e9])).item() == pytest.approx(1 / (0.05 + 1 / (1 + math.exp(20)) * (1 - 1 / (1 + math.exp(20)))), rel=1e-6)
    assert score_from_margin(_t([0.0]), variant="signal").item() == 0.5
    assert score_from_margin(_t([0.0]), variant="loss").item() == pytest.approx(math.log(2))


@given(u=st.lists(margins, min_size=1, max_size=20), band=st.floats(0.0, 3.0))
def test_absolute_boundary_band_is_unstable_and_outside_is_stable(u, band):
    cfg = SageConfig(boundary_band=band, band_scale="absolute", noise_guard=None)
    _, stable = _scores_of_u(u, cfg)
    uu = cfg.beta * (_t(u) / cfg.beta)  # the margins sage_scores sees: (u / beta) * beta can differ from u by an ulp
    inside = (uu.abs() < band) | (uu == 0)
    assert not stable[inside].any()
    # with no history only the band applies
    assert torch.equal(stable, ~inside)


@given(u=st.lists(margins, min_size=1, max_size=40), band=st.floats(0.0, 1.0),
       scale=st.sampled_from([1e-4, 0.05, 1.0, 300.0]))
def test_relative_band_is_scale_free_and_never_holds_half_the_pool(u, band, scale):
    cfg = SageConfig(boundary_band=band, noise_guard=None)
    uu = cfg.beta * (_t(u) / cfg.beta)  # the margins sage_scores sees (see above)
    _, stable = _scores_of_u(u, cfg)
    _, stable_scaled = _scores_of_u((uu * scale).tolist(), cfg)
    # the same pairs are filtered whatever the margin scale (the band is a multiple of the pool's median |u|)
    assert torch.equal(stable, stable_scaled)
    nonzero = uu != 0
    in_band = nonzero & ~stable
    # strictly below band * median|u| <= median|u|: fewer than half of the pool can be inside (zeros aside)
    assert int(in_band.sum()) * 2 <= uu.numel()
    tau = band * float(uu.abs().median())
    assert torch.equal(in_band, nonzero & (uu.abs() < tau))


def test_relative_band_config_bounds():
    with pytest.raises(ValueError, match="boundary_band"):
        SageConfig(boundary_band=1.5)
    SageConfig(boundary_band=1.5, band_scale="absolute")


def test_noise_guard_flags_pairs_far_below_their_peers_only_if_they_stay_there():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(200, generator=g, dtype=torch.float64).clamp(-2.5, 2.5) + 1.0
    u[:5] = -8.0  # far below the rest of the pool
    u[5] = -0.8  # an ordinary error
    cfg = SageConfig(noise_guard=3.0, boundary_band=0.0, band_scale="absolute", sign_consistency=False)
    _, stable = _scores_of_u(u.tolist(), cfg)
    assert not stable[:5].any() and stable[5:].all()
    # with a history: only the pairs that were also far below at the previous observation are suspects
    prev = u.clone()
    prev[:2] = 1.0
    z = torch.zeros_like(u)
    _, stable_h = sage_scores(u / cfg.beta, z, z, z, cfg, history=prev.unsqueeze(1))
    assert stable_h[:2].all() and not stable_h[2:5].any()
    _, off = _scores_of_u(u.tolist(), SageConfig(noise_guard=None, boundary_band=0.0, band_scale="absolute"))
    assert off.all()


@given(u=st.lists(margins, min_size=1, max_size=20))
def test_no_filter_means_only_finiteness(u):
    _, stable = _scores_of_u(u, SageConfig(use_filter=False))
    assert stable.all()


def test_nonfinite_pairs_score_zero_and_unstable():
    cfg = SageConfig()
    pc = _t([float("nan"), float("inf"), -5.0, 5.0])
    z = torch.zeros(4, dtype=torch.float64)
    rr = _t([0.0, 0.0, float("-inf"), 0.0])
    scores, stable = sage_scores(pc, z, z, rr, cfg)
    assert scores[:3].tolist() == [0.0, 0.0, 0.0]
    assert stable.tolist() == [False, False, False, True]


@given(prev=margins, cur=margins)
def test_sign_consistency_against_history(prev, cur):
    assume(cur != 0)
    cfg = SageConfig(boundary_band=0.0, noise_guard=None)
    pc = _t([cur]) / cfg.beta
    z = torch.zeros(1, dtype=torch.float64)
    _, stable = sage_scores(pc, z, z, z, cfg, history=_t([[prev]]))
    flipped = prev * cur < 0
    assert bool(stable[0]) == (not flipped)
    _, stable_off = sage_scores(pc, z, z, z, SageConfig(boundary_band=0.0, sign_consistency=False, noise_guard=None),
                                history=_t([[prev]]))
    assert bool(stable_off[0])


def _reference_temporal(row, sign, var_thr):
    vals = [v for v in row if math.isfinite(v)]
    out = False
    if sign and len(vals) >= 2 and vals[-1] * vals[-2] < 0:
        out = True
    if var_thr is not None and len(vals) >= 2:
        m = sum(vals) / len(vals)
        if sum((v - m) ** 2 for v in vals) / len(vals) > var_thr:
            out = True
    return out


@given(rows=st.lists(st.lists(st.one_of(margins, st.just(float("nan"))), min_size=3, max_size=3),
                     min_size=1, max_size=10),
       sign=st.booleans(), var_thr=st.one_of(st.none(), st.floats(0.01, 50)))
def test_temporal_unstable_matches_reference(rows, sign, var_thr):
    got = temporal_unstable(_t(rows), sign_consistency=sign, variance_threshold=var_thr)
    assert got.tolist() == [_reference_temporal(r, sign, var_thr) for r in rows]


@given(u=st.floats(-5, 5), c1=st.floats(0, 0.25), c2=st.floats(0, 0.25))
def test_token_curvature_variant_prefers_low_curvature(u, c1, c2):
    assume(abs(c1 - c2) > 1e-6)
    cfg = SageConfig(score_variant="token_curvature")
    z = torch.zeros(2, dtype=torch.float64)
    scores, _ = sage_scores(_t([u, u]) / cfg.beta, z, z, z, cfg, rejected_curvature=_t([c1, c2]))
    assert (scores[0] > scores[1]) == (c1 < c2)
    sig = 1 / (1 + math.exp(u))
    assert scores[0].item() == pytest.approx(sig**2 / (c1 + 0.05), rel=1e-9)


def test_implicit_margins_formula_and_validation():
    u = implicit_margins(_t([-1.0]), _t([-3.0]), _t([-2.0]), _t([-2.5]), 0.5)
    assert u.item() == pytest.approx(0.5 * ((-1 + 2) - (-3 + 2.5)))
    with pytest.raises(ValueError, match="beta"):
        implicit_margins(_t([0.0]), _t([0.0]), _t([0.0]), _t([0.0]), 0.0)
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        implicit_margins(_t([0.0]), _t([0.0, 1.0]), _t([0.0]), _t([0.0]), 0.1)
    with pytest.raises(TypeError, match="ref_rejected_logps"):
        implicit_margins(_t([0.0]), _t([0.0]), _t([0.0]), torch.tensor([0]), 0.1)
    with pytest.raises(ValueError, match="rejected_curvature"):
        sage_scores(_t([0.0]), _t([0.0]), _t([0.0]), _t([0.0]), SageConfig(score_variant="token_curvature"),
                    rejected_curvature=_t([0.3]))
    with pytest.raises(ValueError, match="rejected_curvature"):
        score_from_margin(_t([0.0]), variant="token_curvature")
    with pytest.raises(ValueError, match="history"):
        sage_scores(_t([0.0]), _t([0.0]), _t([0.0]), _t([0.0]), SageConfig(), history=_t([[0.0], [1.0]]))


@pytest.mark.parametrize(
    "field,value,exc",
    [
        ("beta", 0.0, ValueError), ("beta", "0.1", TypeError), ("damping", -0.1, ValueError),
        ("boundary_band", -1.0, ValueError), ("history_size", 1, ValueError), ("selection_ratio", 0.0, ValueError),
        ("selection_ratio", 1.5, ValueError), ("selection_mode", "top", ValueError), ("granularity", "x", ValueError),
        ("score_variant", "x", ValueError), ("num_tiers", 0, ValueError), ("tier_mix", 2.0, ValueError),
        ("competence_threshold", 0.0, ValueError), ("exhaust_fraction", 1.0, ValueError),
        ("rescore_interval", 0, ValueError), ("warmup_steps", -1, ValueError), ("seed", -1, ValueError),
        ("variance_threshold", 0.0, ValueError), ("use_filter", 1, TypeError), ("margin_clip", math.inf, ValueError),
        ("margin_source", "x", ValueError), ("band_scale", "x", ValueError), ("noise_guard", 0.0, ValueError),
        ("rescore_scope", "x", ValueError), ("plateau_rounds", -1, ValueError), ("fill", "topk", ValueError),
    ],
)
def test_config_validation_names_the_field(field, value, exc):
    with pytest.raises(exc, match=field):
        SageConfig(**{field: value})
    with pytest.raises(ValueError, match="damping"):
        SageConfig(score_variant="token_curvature", damping=0.0)


# ---------------------------------------------------------------- curriculum helpers


@given(d=st.lists(st.floats(0, 1), min_size=1, max_size=60), m=st.integers(1, 5))
def test_tiers_monotone_in_difficulty_and_in_range(d, m):
    dt = _t(d)
    tiers = tiers_from_difficulty(dt, m)
    assert tiers.dtype == torch.int64 and tiers.min() >= 0 and tiers.max() < m
    order = torch.argsort(dt, stable=True)
    assert (tiers[order].diff() >= 0).all()
    # equal difficulties share a tier
    for v in set(d):
        assert torch.unique(tiers[dt == v]).numel() == 1


@given(n=st.integers(2, 60), m=st.integers(1, 5), seed=st.integers(0, 1000))
def test_tiers_all_nonempty_with_distinct_difficulties(n, m, seed):
    assume(n > m)
    d = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).double() / n
    tiers = tiers_from_difficulty(d, m)
    assert torch.unique(tiers).numel() == m


@given(c0=st.floats(0.01, 1.0), total=st.integers(1, 1000), t1=st.integers(0, 2000), t2=st.integers(0, 2000))
def test_schedule_fraction(c0, total, t1, t2):
    assert schedule_fraction(0, total, c0) == pytest.approx(c0)
    assert schedule_fraction(total, total, c0) == pytest.approx(1.0)
    a, b = sorted((t1, t2))
    assert c0 - 1e-12 <= schedule_fraction(a, total, c0) <= schedule_fraction(b, total, c0) <= 1.0


@given(total=st.integers(1, 500), levels=st.integers(1, 5), t=st.integers(0, 600))
def test_static_level_schedule(total, levels, t):
    lv = static_level(t, total, levels)
    assert 0 <= lv < levels
    assert lv <= static_level(t + 1, total, levels)
    assert static_level(0, total, levels) == 0


@given(n=st.integers(1, 80), level=st.integers(0, 2), mix=st.floats(0, 1), seed=st.integers(0, 100))
def test_tier_pool_contents(n, level, mix, seed):
    g = torch.Generator().manual_seed(seed)
    tiers = torch.randint(0, 3, (n,), generator=g)
    shard = torch.arange(n)
    pool = tier_pool(shard, tiers, level, mix, g)
    assert torch.unique(pool).numel() == pool.numel()
    assert (tiers[pool] <= level + 1).all()
    assert set((tiers <= level).nonzero().flatten().tolist()) <= set(pool.tolist())
    nxt = int((tiers == level + 1).sum())
    assert int((tiers[pool] == level + 1).sum()) == (math.ceil(mix * nxt) if mix > 0 else 0)
    order = torch.arange(n)
    p = easiest_fraction_pool(order, 0.5, 1)
    assert p.tolist() == list(range(max(1, math.ceil(0.5 * n))))
