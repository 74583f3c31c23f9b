"""Properties of the stateful selectors: batch guarantees, the filter, top-k/online selection, curriculum,
fallbacks, NaN handling, exact resume through state_dict, data-parallel shards and the baselines."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.selection import (
    SELECTOR_NAMES,
    SageConfig,
    SageSelector,
    make_selector,
)



class Feeder:
    """Deterministic margins u(i, t) = base_i + slope_i * t (NaN for pairs in ``nan``); log-probs that produce them."""

    def __init__(self, n, seed, nan=(), scale=2.0, slope=0.05, beta=0.1, drift=0.0):
        g = torch.Generator().manual_seed(seed)
        self.base = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * scale
        self.slope = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * slope + drift
        self.nan = torch.zeros(n, dtype=torch.bool)
        self.nan[list(nan)] = True
        self.beta = beta
        self.fed_nan: set[int] = set()

    def u(self, idx, t):
        u = self.base[idx] + self.slope[idx] * t
        return torch.where(self.nan[idx], torch.full_like(u, math.nan), u)

    def logps(self, idx, t):
        z = torch.zeros(idx.numel(), dtype=torch.float64)
        return self.u(idx, t) / self.beta, z, z, z

    def feed(self, sel, t):
        requests = []
        while (idx := sel.indices_to_score()).numel() > 0:
            requests.append(idx.tolist())
            sel.update_scores(idx, *self.logps(idx, t))
            self.fed_nan |= set(idx[self.nan[idx]].tolist())
        return requests


def _run(sel, feeder, steps, start=0, observe=True):
    log = []
    for t in range(start, start + steps):
        req = feeder.feed(sel, t)
        b = sel.next_batch()
        if observe:
            sel.observe_batch(b, *feeder.logps(b, t + 0.5))
            feeder.fed_nan |= set(b[feeder.nan[b]].tolist())
        log.append((req, b.tolist()))
    return log


def _tiers(n, seed=0, m=3):
    return torch.randint(0, m, (n,), generator=torch.Generator().manual_seed(seed))


sel_args = st.fixed_dictionaries(
    {
        "name": st.sampled_from(SELECTOR_NAMES),
        "n": st.integers(8, 90),
        "b": st.integers(1, 8),
        "rho": st.sampled_from([0.25, 0.5, 1.0]),
        "granularity": st.sampled_from(["pool", "online"]),
        "mode": st.sampled_from(["topk", "sample"]),
        "replicas": st.integers(1, 3),
        "seed": st.integers(0, 10_000),
        "nan_share": st.sampled_from([0.0, 0.0, 0.2]),
        "refresh": st.sampled_from(["threshold", "schedule"]),
    }
)


def _build(a, **kw):
    cfg = SageConfig(
        selection_ratio=a["rho"],
        granularity=a["granularity"],
        selection_mode=a["mode"],
        refresh_mode=a["refresh"],
        seed=a["seed"],
    )
    n = a["n"]
    diff = torch.rand(n, generator=torch.Generator().manual_seed(a["seed"] + 1), dtype=torch.float64)
    kwargs = dict(num_pairs=n, batch_size=a["b"], config=cfg, difficulty=diff, total_steps=30,
                  num_replicas=a["replicas"], rank=a["seed"] % a["replicas"])
    kwargs.update(kw)
    return make_selector(a["name"], **kwargs)


def _nan_set(a):
    n = a["n"]
    k = int(a["nan_share"] * n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(a["seed"] + 2))[:k].tolist()


def _enough_valid(a, sel, nan):
    shard = set(sel.shard.tolist())
    return len(shard - set(nan)) >= a["b"]


@settings(max_examples=50)
@given(a=sel_args, steps=st.integers(1, 30))
def test_batches_full_unique_in_shard_and_never_known_nan(a, steps):
    if a["n"] // a["replicas"] < a["b"]:
        with pytest.raises(ValueError, match="batch_size"):
            _build(a)
        return
    sel = _build(a)
    nan = _nan_set(a)
    feeder = Feeder(a["n"], a["seed"], nan=nan)
    if not _enough_valid(a, sel, nan):
        return
    shard = set(sel.shard.tolist())
    nan_feeds = 0
    for t in range(steps):
        for req in feeder.feed(sel, t):
            nan_feeds += sum(1 for i in req if i in set(nan))
            assert set(req) <= shard
        known_nan = set(feeder.fed_nan)
        b = sel.next_batch()
        bl = b.tolist()
        assert b.dtype == torch.int64 and len(bl) == a["b"] and len(set(bl)) == a["b"]
        assert set(bl) <= shard
        assert not (set(bl) & known_nan), "a pair whose log-probs were NaN was selected"
        sel.observe_batch(b, *feeder.logps(b, t))
        nan_feeds += sum(1 for i in bl if i in set(nan))
        feeder.fed_nan |= set(bl) & set(nan)
    m = sel.metrics()
    assert all(isinstance(v, float) for v in m.values())
    assert m["nonfinite_margins"] == nan_feeds
    assert m["invalid_pairs"] == len(feeder.fed_nan & shard)
    assert m["step"] == steps


@settings(max_examples=40)
@given(a=sel_args, before=st.integers(0, 25), after=st.integers(1, 12))
def test_state_dict_round_trip_reproduces_next_selections(a, before, after):
    if a["n"] // a["replicas"] < a["b"]:
        return
    nan = _nan_set(a)
    sel = _build(a)
    if not _enough_valid(a, sel, nan):
        return
    # margins drift across 0 so that sign flips (temporal filter state) and curriculum refreshes (competence
    # grows with the drift) matter for the continuation
    feeder = Feeder(a["n"], a["seed"], nan=nan, slope=0.3, drift=0.15)
    _run(sel, feeder, before)
    buf = io.BytesIO()
    torch.save(sel.state_dict(), buf)
    cont = _run(sel, feeder, after, start=before)
    fresh = _build(a)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    resumed = _run(fresh, Feeder(a["n"], a["seed"], nan=nan, slope=0.3, drift=0.15), after, start=before)
    assert resumed == cont
    m1, m2 = sel.metrics(), fresh.metrics()
    assert m1.keys() == m2.keys()
    for k in m1:
        assert m1[k] == m2[k] or (math.isnan(m1[k]) and math.isnan(m2[k])), k


@pytest.mark.parametrize("granularity", ["pool", "online"])
@pytest.mark.parametrize("mode", ["topk", "sample"])
@pytest.mark.parametrize("name", ["sage", "sage_no_filter"])
def test_state_dict_round_trip_across_curriculum_refreshes(granularity, mode, name):
    n, b = 90, 4
    a = dict(name=name, n=n, b=b, rho=0.5, granularity=granularity, mode=mode, replicas=1, seed=11,
             nan_share=0.2, refresh="threshold")
    nan = _nan_set(a)
    feeder = Feeder(n, 11, nan=nan, slope=0.3, drift=0.3)
    sel = _build(a)
    before = 0
    while sel.metrics()["refreshes"] < 1:  # save after the first refresh
        _run(sel, feeder, 1, start=before)
        before += 1
        assert before < 60, "the curriculum never refreshed"
    state = sel.state_dict()
    cont = _run(sel, feeder, 15, start=before)
    fresh = _build(a)
    fresh.load_state_dict(state)
    resumed = _run(fresh, Feeder(n, 11, nan=nan, slope=0.3, drift=0.3), 15, start=before)
    assert resumed == cont
    assert sel.metrics()["level"] == fresh.metrics()["level"] > 0


# The first reconstruction's rules, still available as options: absolute band, no noise guard, top-k fill by score,
# whole-pool rescoring.
LEGACY = dict(band_scale="absolute", boundary_band=0.5, noise_guard=None, fill="score", rescore_scope="pool")


def _pool_sage(n, b, **cfg):
    base = dict(use_curriculum=False, sign_consistency=False, warmup_steps=0, selection_ratio=0.5, **LEGACY)
    base.update(cfg)
    return SageSelector(num_pairs=n, batch_size=b, config=SageConfig(**base))


@given(seed=st.integers(0, 10_000), n=st.integers(10, 80), b=st.integers(1, 6), band=st.floats(0.1, 1.5),
       mode=st.sampled_from(["topk", "sample"]))
def test_pool_selection_is_top_rho_of_stable_pairs_and_never_the_band(seed, n, b, band, mode):
    feeder = Feeder(n, seed, slope=0.0)
    sel = _pool_sage(n, b, boundary_band=band, selection_mode=mode)
    feeder.feed(sel, 0)
    u = feeder.base
    eligible = (u.abs() >= band).nonzero().flatten()
    nominal = max(math.ceil(0.5 * n), b)
    k = min(nominal, eligible.numel())
    steps = max(1, nominal // b)
    seen = set()
    for _ in range(steps):
        seen |= set(sel.next_batch().tolist())
    if eligible.numel() >= nominal:
        assert all(abs(u[i].item()) >= band for i in seen), "a boundary-band pair was selected"
        if mode == "topk":
            top = eligible[torch.argsort(u[eligible])[:k]]  # S decreasing in u: top-k by S = lowest u
            assert seen <= set(top.tolist())
        else:
            assert seen <= set(eligible.tolist())
        assert sel.metrics()["fallback_fraction"] == 0.0
    else:
        # every eligible pair is in the working set; the floor is filled uniformly from the rest of the pool
        assert set(eligible.tolist()) <= set(sel._working.tolist())
        assert sel._working.numel() == nominal
        assert sel.metrics()["fallback_fraction"] == pytest.approx((nominal - k) / nominal)
    expected_unstable = float((u.abs() < band).double().mean())
    assert sel.metrics()["unstable_fraction"] == pytest.approx(expected_unstable)


@given(seed=st.integers(0, 10_000), n=st.integers(12, 80), b=st.integers(1, 6), rho=st.sampled_from([0.25, 0.5]))
def test_online_batch_is_top_b_of_scored_candidates(seed, n, b, rho):
    feeder = Feeder(n, seed, slope=0.0)
    sel = _pool_sage(n, b, granularity="online", selection_ratio=rho)
    for t in range(5):
        cand = sel.indices_to_score()
        assert cand.numel() == min(n, math.ceil(b / rho))
        sel.update_scores(cand, *feeder.logps(cand, t))
        batch = set(sel.next_batch().tolist())
        assert batch <= set(cand.tolist())
        u = feeder.base[cand]
        stable = u.abs() >= 0.5
        if int(stable.sum()) >= b:
            el = cand[stable]
            assert batch == set(el[torch.argsort(feeder.base[el])[:b]].tolist())
        else:
            assert set(cand[stable].tolist()) <= batch  # every stable candidate is kept, the rest is fallback


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), damping=st.floats(0.0, 1.0))
def test_topk_ranking_equals_loss_ranking(seed, damping):
    # B4 [derived]: S is monotone in u, so signal_only and dynamic-loss ranking select exactly what SAGE selects.
    n, b = 40, 4
    runs = []
    for variant in ("newton", "signal", "loss"):
        sel = _pool_sage(n, b, damping=damping, score_variant=variant, sign_consistency=True, boundary_band=0.3,
                         rescore_interval=2)
        runs.append(_run(sel, Feeder(n, seed, slope=0.3), 12))
    assert runs[0] == runs[1] == runs[2]


def test_sample_mode_prefers_high_scores():
    n, b = 400, 20
    feeder = Feeder(n, 3, slope=0.0, scale=6.0)
    counts = torch.zeros(n)
    for s in range(30):
        sel = _pool_sage(n, b, selection_mode="sample", selection_ratio=0.25, seed=s)
        feeder.feed(sel, 0)
        for _ in range(5):
            counts[sel.next_batch()] += 1
    u = feeder.base
    errors = (u <= -1).nonzero().flatten()
    trivial = (u >= 1).nonzero().flatten()
    assert counts[errors].mean() > 3 * counts[trivial].mean()
    assert counts[(u.abs() < 0.5)].sum() == 0


def test_fallback_all_unstable_pool_never_crashes_or_empties():
    n, b = 40, 8
    for cfg in (dict(), dict(granularity="online")):
        sel = SageSelector(num_pairs=n, batch_size=b, config=SageConfig(warmup_steps=0, **cfg))
        for _ in range(6):
            while (idx := sel.indices_to_score()).numel():
                zi = torch.zeros(idx.numel(), dtype=torch.float64)
                sel.update_scores(idx, zi, zi, zi, zi)  # u = 0: every pair in the boundary band
            batch = sel.next_batch()
            assert batch.numel() == b and batch.unique().numel() == b
        assert sel.metrics()["fallback_fraction"] == 1.0
        assert sel.metrics()["unstable_fraction"] == 1.0


def test_fallback_sign_flipping_pool():
    n, b = 30, 5
    sel = SageSelector(num_pairs=n, batch_size=b, config=SageConfig(warmup_steps=0, use_curriculum=False,
                                                                    rescore_interval=1, rescore_scope="pool"))
    for t in range(6):
        while (idx := sel.indices_to_score()).numel():
            u = torch.full((idx.numel(),), 2.0 if t % 2 else -2.0, dtype=torch.float64)
            z = torch.zeros_like(u)
            sel.update_scores(idx, u / 0.1, z, z, z)
        assert sel.next_batch().numel() == b
        if t >= 1:
            assert sel.metrics()["sign_flip_fraction"] == 1.0
            assert sel.metrics()["fallback_fraction"] == 1.0


def test_nan_pool_falls_back_outside_pool_and_all_nan_raises():
    n, b = 30, 4
    tiers = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    sel = SageSelector(num_pairs=n, batch_size=b, tiers=tiers,
                       config=SageConfig(warmup_steps=0, tier_mix=0.0))
    idx = sel.indices_to_score()
    assert set(idx.tolist()) == set(range(10))
    nanv = torch.full((10,), math.nan, dtype=torch.float64)
    sel.update_scores(idx, nanv, nanv, nanv, nanv)
    for _ in range(3):
        batch = sel.next_batch()
        assert (batch >= 10).all()
    assert sel.metrics()["invalid_pairs"] == 10.0
    assert sel.metrics()["nonfinite_margins"] == 10.0
    # all pairs non-finite: an upstream bug, reported loudly
    sel2 = SageSelector(num_pairs=n, batch_size=b, config=SageConfig(warmup_steps=0, use_curriculum=False))
    idx = sel2.indices_to_score()
    nanv = torch.full((n,), math.nan, dtype=torch.float64)
    sel2.update_scores(idx, nanv, nanv, nanv, nanv)
    with pytest.raises(RuntimeError, match="non-finite"):
        sel2.next_batch()
    # a later finite score clears the flag
    z = torch.zeros(n, dtype=torch.float64)
    sel2.update_scores(idx, z + 30.0, z, z, z)
    assert sel2.next_batch().numel() == b
    assert sel2.metrics()["invalid_pairs"] == 0.0


def _feed_const(sel, u_of):
    reqs = []
    while (idx := sel.indices_to_score()).numel():
        reqs.append(idx.clone())
        u = u_of(idx)
        z = torch.zeros(idx.numel(), dtype=torch.float64)
        sel.update_scores(idx, u / sel.config.beta, z, z, z)
    return reqs


def test_competence_refresh_advances_tiers_and_requests_only_new_pairs():
    n, b = 60, 4
    tiers = torch.arange(n) % 3
    sel = SageSelector(num_pairs=n, batch_size=b, tiers=tiers,
                       config=SageConfig(warmup_steps=0, tier_mix=0.0, competence_threshold=0.8))
    assert sel.metrics()["level"] == 0.0
    reqs = _feed_const(sel, lambda idx: torch.full((idx.numel(),), 2.0, dtype=torch.float64))
    # round on tier 0 -> competence 1 -> tier 1 added -> follow-up on tier 1 only -> competence 1 -> tier 2
    assert [set(tiers[r].tolist()) for r in reqs] == [{0}, {1}, {2}]
    assert sel.metrics()["level"] == 2.0
    assert sel.metrics()["refreshes"] == 2.0
    assert sel.metrics()["pool_size"] == n
    assert sel.metrics()["pairs_scored"] == n
    sel.next_batch()


def test_no_refresh_below_threshold_and_refresh_when_exhausted():
    n, b = 60, 4
    tiers = torch.arange(n) % 3
    sel = SageSelector(num_pairs=n, batch_size=b, tiers=tiers, config=SageConfig(warmup_steps=0, tier_mix=0.0))
    _feed_const(sel, lambda idx: torch.full((idx.numel(),), -2.0, dtype=torch.float64))
    assert sel.metrics()["level"] == 0.0 and sel.metrics()["competence"] == 0.0
    # 70% correct (< kappa 0.8), the rest in the boundary band: no stable confident error left -> exhausted
    sel = SageSelector(num_pairs=n, batch_size=b, tiers=tiers, config=SageConfig(warmup_steps=0, tier_mix=0.0))
    _feed_const(sel, lambda idx: torch.where(idx % 10 < 7, 2.0, -0.1).double())
    assert sel.metrics()["level"] == 2.0


def test_external_competence():
    n, b = 60, 4
    tiers = torch.arange(n) % 3
    cfg = SageConfig(warmup_steps=0, tier_mix=0.0, competence_source="external", rescore_interval=1,
                     rescore_scope="pool")
    sel = SageSelector(num_pairs=n, batch_size=b, tiers=tiers, config=cfg)
    # 85% correct (pool accuracy above kappa), 15% stable confident errors (so the pool is not exhausted)
    pos = lambda idx: torch.where(idx % 20 < 17, 2.0, -2.0).double()  # noqa: E731
    _feed_const(sel, pos)
    assert sel.metrics()["level"] == 0.0  # pool accuracy is 0.85 but it is not the configured source
    assert math.isnan(sel.metrics()["competence"])
    sel.next_batch()
    sel.set_competence(0.9)
    _feed_const(sel, pos)
    assert sel.metrics()["level"] == 1.0
    with pytest.raises(ValueError, match="competence"):
        sel.set_competence(1.5)


def test_schedule_refresh_grows_pool_with_c_of_t():
    n, b, total = 100, 4, 40
    diff = torch.linspace(0, 1, n, dtype=torch.float64)
    cfg = SageConfig(refresh_mode="schedule", schedule_c0=0.25, rescore_interval=5, warmup_steps=0,
                     rescore_scope="pool")
    sel = SageSelector(num_pairs=n, batch_size=b, difficulty=diff, total_steps=total, config=cfg)
    sizes = []
    for t in range(total + 1):
        reqs = _feed_const(sel, lambda idx: torch.full((idx.numel(),), -1.0, dtype=torch.float64))
        if reqs:
            c = min(1.0, math.sqrt(t * (1 - 0.25**2) / total + 0.25**2))
            assert reqs[0].numel() == max(b, math.ceil(c * n))
            assert reqs[0].max().item() == reqs[0].numel() - 1  # the easiest pairs (difficulty increases with index)
            sizes.append(reqs[0].numel())
        sel.next_batch()
    assert sizes == sorted(sizes) and sizes[-1] == n


def test_pull_mode_equals_push_mode():
    n, b = 50, 4
    feeder = Feeder(n, 7)
    tiers = _tiers(n)
    push = SageSelector(num_pairs=n, batch_size=b, tiers=tiers)
    step = {"t": 0}
    pull = SageSelector(num_pairs=n, batch_size=b, tiers=tiers,
                        score_fn=lambda idx: feeder.logps(idx, step["t"]))
    for t in range(40):
        step["t"] = t
        feeder.feed(push, t)
        assert push.next_batch().tolist() == pull.next_batch().tolist()
    assert push.metrics() == pull.metrics() or all(
        push.metrics()[k] == pull.metrics()[k] or math.isnan(push.metrics()[k]) for k in push.metrics()
    )


def test_unfed_request_is_reported_and_selection_continues():
    n, b = 40, 4
    sel = SageSelector(num_pairs=n, batch_size=b, config=SageConfig(warmup_steps=2, use_curriculum=False,
                                                                    rescore_interval=1, rescore_scope="pool"))
    for t in range(8):
        batch = sel.next_batch()
        assert batch.numel() == b
        if t >= 2:
            assert sel.metrics()["score_pending"] == 1.0
        else:
            assert sel.metrics()["score_pending"] == 0.0


@given(n=st.integers(6, 60), replicas=st.integers(1, 4), seed=st.integers(0, 1000))
def test_data_parallel_shards_are_disjoint_and_cover(n, replicas, seed):
    shards = [
        make_selector("dpo_full", num_pairs=n, batch_size=1, config=SageConfig(seed=seed), rank=r,
                      num_replicas=replicas).shard.tolist()
        for r in range(replicas)
        if n // replicas >= 1
    ]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_ranks_and_epochs_are_seeded_differently_and_deterministically():
    n, b = 64, 4

    def batches(rank, epoch):
        s = make_selector("dpo_full", num_pairs=n, batch_size=b, rank=rank, num_replicas=2)
        s.set_epoch(epoch)
        return [s.next_batch().tolist() for _ in range(4)]

    assert batches(0, 0) == batches(0, 0)
    assert batches(0, 0) != batches(0, 1)
    assert not set(sum(batches(0, 0), [])) & set(sum(batches(1, 0), []))


# ---------------------------------------------------------------- baselines


def test_dpo_full_pass_covers_every_pair_once():
    n, b = 48, 8
    sel = make_selector("dpo_full", num_pairs=n, batch_size=b)
    first_pass = sum((sel.next_batch().tolist() for _ in range(n // b)), [])
    assert sorted(first_pass) == list(range(n))
    assert sel.indices_to_score().numel() == 0


@given(seed=st.integers(0, 1000), rho=st.sampled_from([0.25, 0.5]))
def test_random_subset_and_selective_dpo_fixed_subsets(seed, rho):
    n, b = 40, 4
    diff = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cfg = SageConfig(selection_ratio=rho, seed=seed)
    k = math.ceil(rho * n)
    rs = make_selector("random_subset", num_pairs=n, batch_size=b, config=cfg)
    seen = set(sum((rs.next_batch().tolist() for _ in range(30)), []))
    assert len(seen) == k
    sd = make_selector("selective_dpo", num_pairs=n, batch_size=b, config=cfg, difficulty=diff, tiers=None)
    seen = set(sum((sd.next_batch().tolist() for _ in range(30)), []))
    tiers = sd.tiers
    # easiest first: by tier, then by difficulty
    key = tiers.double() * 10 + diff
    assert seen == set(torch.argsort(key)[:k].tolist())


@given(seed=st.integers(0, 1000), crit=st.sampled_from(["static_low_gap", "static_high_margin"]))
def test_static_score_baselines_keep_smallest_or_largest_warmup_margins(seed, crit):
    n, b = 40, 4
    feeder = Feeder(n, seed)
    sel = make_selector(crit, num_pairs=n, batch_size=b, config=SageConfig(warmup_steps=3))
    log = _run(sel, feeder, 30, observe=False)
    reqs = [r for r, _ in log if r]
    assert len(reqs) == 1 and sorted(reqs[0][0]) == list(range(n))  # scored exactly once, after the warm-up
    u = feeder.u(torch.arange(n), 3)
    k = math.ceil(0.5 * n)
    order = torch.argsort(u) if crit == "static_low_gap" else torch.argsort(-u)
    expected = set(order[:k].tolist())
    seen = set(sum((bt for _, bt in log[4:]), []))
    assert seen == expected
    ext = make_selector(crit, num_pairs=n, batch_size=b, external_margins=u.float())
    seen = set(sum((ext.next_batch().tolist() for _ in range(30)), []))
    assert seen == expected and ext.indices_to_score().numel() == 0


def test_static_curriculum_follows_fixed_schedule():
    n, b, total = 60, 4, 30
    tiers = torch.arange(n) % 3
    sel = make_selector("static_curriculum", num_pairs=n, batch_size=b, tiers=tiers, total_steps=total,
                        config=SageConfig(tier_mix=0.0))
    for t in range(total):
        batch = sel.next_batch()
        assert tiers[batch].max().item() <= t * 3 // total
        assert sel.metrics()["level"] == t * 3 // total
    assert sel.indices_to_score().numel() == 0


# ---------------------------------------------------------------- validation


def test_validation_errors():
    n = 20
    sel = SageSelector(num_pairs=n, batch_size=4, config=SageConfig(warmup_steps=0, use_curriculum=False),
                       num_replicas=2, rank=1)
    z = torch.zeros(1)
    other = [i for i in range(n) if i not in set(sel.shard.tolist())][0]
    with pytest.raises(ValueError, match="shard"):
        sel.update_scores(torch.tensor([other]), z, z, z, z)
    mine = sel.shard[:2]
    with pytest.raises(ValueError, match="duplicate"):
        sel.update_scores(torch.stack([mine[0], mine[0]]), torch.zeros(2), torch.zeros(2), torch.zeros(2),
                          torch.zeros(2))
    with pytest.raises(ValueError, match="length"):
        sel.update_scores(mine, z, z, z, z)
    with pytest.raises(TypeError, match="indices"):
        sel.update_scores(mine.float(), torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        sel.update_scores(torch.tensor([25]), z, z, z, z)
    with pytest.raises(ValueError, match="tiers"):
        SageSelector(num_pairs=n, batch_size=4, tiers=torch.full((n,), 3))
    with pytest.raises(TypeError, match="tiers"):
        SageSelector(num_pairs=n, batch_size=4, tiers=torch.zeros(n))
    with pytest.raises(ValueError, match="batch_size"):
        SageSelector(num_pairs=n, batch_size=11, num_replicas=2)
    with pytest.raises(ValueError, match="rank"):
        SageSelector(num_pairs=n, batch_size=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="total_steps"):
        SageSelector(num_pairs=n, batch_size=1, config=SageConfig(refresh_mode="schedule"))
    with pytest.raises(ValueError, match="unknown selector 'sage2'.*Did you mean 'sage'"):
        make_selector("sage2", num_pairs=n, batch_size=1)
    with pytest.raises(ValueError, match="external_margins"):
        make_selector("sage", num_pairs=n, batch_size=1, external_margins=torch.zeros(n))
    with pytest.raises(ValueError, match="total_steps"):
        make_selector("static_curriculum", num_pairs=n, batch_size=1)
    with pytest.raises(ValueError, match="difficulty"):
        make_selector("selective_dpo", num_pairs=n, batch_size=1)
    tok = SageSelector(num_pairs=n, batch_size=1, config=SageConfig(score_variant="token_curvature"))
    with pytest.raises(ValueError, match="rejected_curvature"):
        tok.update_scores(torch.tensor([0]), z, z, z, z)
    tok.update_scores(torch.tensor([0]), z, z, z, z, rejected_curvature=torch.tensor([0.1]))
    other_sel = SageSelector(num_pairs=n, batch_size=4, config=SageConfig(seed=1))
    with pytest.raises(ValueError, match="config"):
        other_sel.load_state_dict(SageSelector(num_pairs=n, batch_size=4).state_dict())
    with pytest.raises(ValueError, match="batch_size"):
        SageSelector(num_pairs=n, batch_size=2).load_state_dict(SageSelector(num_pairs=n, batch_size=4).state_dict())
