"""Properties of the second SAGE design: no trivial fill, uniform fallback with a floor, scale-free band, step-0
signal, noise guard, fixed cadence, noise-proof competence, and the state checks of `load_state_dict`."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.selection import SageConfig, SageSelector, make_selector
from rlplugins.selection.margins import implicit_margins, pair_margins


def _feed(sel, u_of):
    """Answer every open request with log-probs whose policy margin (and implicit margin) is ``u_of(idx)``."""
    n_req = 0
    while (idx := sel.indices_to_score()).numel():
        u = u_of(idx).double()
        z = torch.zeros(idx.numel(), dtype=torch.float64)
        sel.update_scores(idx, u / sel.config.beta, z, z, z)
        n_req += idx.numel()
    return n_req


def _sage(n, b, **cfg):
    base = dict(use_curriculum=False, sign_consistency=False)
    base.update(cfg)
    return SageSelector(num_pairs=n, batch_size=b, config=SageConfig(**base))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 120), b=st.integers(1, 6), err_share=st.floats(0.0, 0.6),
       rho=st.sampled_from([0.25, 0.5]))
def test_working_set_is_wanted_errors_then_uniform_fill_up_to_the_floor(seed, n, b, err_share, rho):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.5  # correct pairs, margins in [0.5, 3.5]
    n_err = int(err_share * n)
    u[:n_err] = -(torch.rand(n_err, generator=g, dtype=torch.float64) + 0.5)  # errors in [-1.5, -0.5]
    sel = _sage(n, b, selection_ratio=rho, noise_guard=None, seed=seed)
    _feed(sel, lambda idx: u[idx])
    sel.next_batch()
    w = sel._working
    floor = max(b, math.ceil(rho * n))
    assert w.numel() == floor == torch.unique(w).numel()  # never below the floor, no duplicates
    errors = set(range(n_err))
    chosen = set(w.tolist()) & errors
    k = min(floor, n_err)
    # every wanted pair the floor allows is in, ranked by score (lowest margins first)
    assert chosen == set(torch.argsort(u[:n_err])[:k].tolist())
    assert sel.metrics()["fallback_fraction"] == pytest.approx((floor - k) / floor)


def test_fill_is_uniform_not_the_largest_or_smallest_margins():
    n, b = 400, 8
    u = torch.linspace(0.5, 10.0, n, dtype=torch.float64)  # no error at all: the signal wants nothing
    counts = torch.zeros(n)
    for seed in range(40):
        sel = _sage(n, b, selection_ratio=0.25, seed=seed)
        _feed(sel, lambda idx: u[idx])
        sel.next_batch()
        counts[sel._working] += 1
        assert sel.metrics()["fallback_fraction"] == 1.0
    # each pair is in the working set with probability 1/4 whatever its margin: compare the quartiles of margins
    q = counts.view(4, -1).sum(1) / (40 * 100)
    assert torch.all((q - 0.25).abs() < 0.04), q.tolist()


def test_weak_signal_degrades_to_uniform_over_the_pool():
    n, b = 64, 4
    sel = _sage(n, b, selection_ratio=1.0)
    _feed(sel, lambda idx: torch.zeros(idx.numel()))  # every margin 0: no information at all
    seen = set()
    for _ in range(n // b):
        seen |= set(sel.next_batch().tolist())
    assert seen == set(range(n))  # one pass over the whole pool, like dpo_full
    assert sel.metrics()["fallback_fraction"] == 1.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 0.05, 30.0]))
def test_selection_is_scale_free(seed, scale):
    n, b = 80, 4
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=g, dtype=torch.float64) * 0.6 + 0.3
    runs = []
    for s in (1.0, scale):
        sel = _sage(n, b, seed=seed, margin_clip=1e6)
        _feed(sel, lambda idx: u[idx] * s)
        runs.append([sel.next_batch().tolist() for _ in range(12)])
        m = sel.metrics()
        assert m["boundary_fraction"] < 0.5
    assert runs[0] == runs[1]


def test_policy_margin_is_informative_at_step_zero_and_implicit_waits():
    n, b = 40, 4
    sel = _sage(n, b)  # margin_source="policy": scored before the first update
    assert sel.indices_to_score().numel() == n
    imp = _sage(n, b, margin_source="implicit", selection_ratio=0.5)
    assert imp.indices_to_score().numel() == 0  # implicit margins are all 0 at step 0: uniform warm-up first
    pc, pr, rc, rr = (torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]), torch.tensor([-1.0, -3.0]),
                      torch.tensor([-2.0, -1.0]))
    assert pair_margins(pc, pr, rc, rr, 0.5, "policy").tolist() == [0.5, -1.0]
    assert implicit_margins(pc, pr, rc, rr, 0.5).tolist() == [0.0, 0.0]


def test_noise_guard_keeps_suspects_out_of_the_working_set():
    n, b = 200, 4
    tiers = torch.arange(n) % 2
    noise = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(-2, 2)
    u = torch.where(tiers == 0, 4.0 + 0.3 * noise, 0.5 + 2.0 * noise)  # the hard tier (odd) errs often
    u[0:10:2] = -4.0  # easy tier: far below their peers -> suspects
    u[11:20:2] = -1.0  # ordinary errors on the hard tier
    sel = SageSelector(num_pairs=n, batch_size=b, tiers=tiers,
                       config=SageConfig(use_curriculum=False, selection_ratio=0.5, sign_consistency=False))
    _feed(sel, lambda idx: u[idx])
    sel.next_batch()
    w = set(sel._working.tolist())
    suspects = {i for i in range(10) if i % 2 == 0}
    assert not (w & suspects)
    assert set(range(11, 20, 2)) <= w
    assert sel.metrics()["noise_suspect_fraction"] > 0


def test_fixed_cadence_and_cached_rounds_cost_nothing_after_step_zero():
    n, b = 60, 4
    sel = _sage(n, b, rescore_interval=5)
    u = torch.linspace(-1, 2, n, dtype=torch.float64)
    scored = []
    for _ in range(20):
        scored.append(_feed(sel, lambda idx: u[idx]))
        batch = sel.next_batch()
        z = torch.zeros(b, dtype=torch.float64)
        sel.observe_batch(batch, (u[batch] + 1.0) / sel.config.beta, z, z, z)  # trained pairs improve
    assert scored[0] == n and sum(scored[1:]) == 0  # step 0 only; later rounds use step-0 and observed margins
    assert sel.metrics()["rounds"] == 4  # steps 0, 5, 10, 15
    pool = _sage(n, b, rescore_interval=5, rescore_scope="pool")
    costs = []
    for _ in range(20):
        costs.append(_feed(pool, lambda idx: u[idx]))
        pool.next_batch()
    assert [i for i, c in enumerate(costs) if c] == [0, 5, 10, 15] and all(c == n for c in costs if c)


def test_competence_plateau_advances_the_curriculum_whatever_the_noise():
    n, b = 90, 3
    tiers = torch.arange(n) % 3
    # a third of every tier stays "wrong" (as mislabelled pairs would): accuracy is capped at 2/3 < kappa
    u_of = lambda idx: torch.where(idx % 9 < 3, -1.0, 2.0).double()  # noqa: E731
    sel = SageSelector(num_pairs=n, batch_size=b, tiers=tiers,
                       config=SageConfig(tier_mix=0.0, rescore_interval=2, rescore_scope="pool", plateau_rounds=2,
                                         noise_guard=None, sign_consistency=False))
    for _ in range(12):
        _feed(sel, u_of)
        sel.next_batch()
    assert sel.metrics()["level"] == 2.0
    stuck = SageSelector(num_pairs=n, batch_size=b, tiers=tiers,
                         config=SageConfig(tier_mix=0.0, rescore_interval=2, rescore_scope="pool", plateau_rounds=0,
                                           noise_guard=None, sign_consistency=False, competence_source="pool"))
    for _ in range(12):
        _feed(stuck, u_of)
        stuck.next_batch()
    assert stuck.metrics()["level"] == 0.0  # the old pool-accuracy trigger never fires under a cap


# ---------------------------------------------------------------- load_state_dict checks


def _trained(name="sage", difficulty=None, tiers=None, n=30, b=3):
    sel = make_selector(name, num_pairs=n, batch_size=b, difficulty=difficulty, tiers=tiers, total_steps=50)
    u = torch.linspace(-1, 1, n, dtype=torch.float64)
    for _ in range(4):
        _feed(sel, lambda idx: u[idx])
        sel.next_batch()
    return sel


def test_state_with_another_difficulty_but_the_same_tiers_is_refused():
    n = 30
    d1 = torch.linspace(0, 1, n, dtype=torch.float64)
    d2 = d1.clone()
    d2[0], d2[1] = d1[1], d1[0]  # same quantile tiers, another order inside tier 0
    a = _trained(difficulty=d1)
    b = make_selector("sage", num_pairs=n, batch_size=3, difficulty=d2, total_steps=50)
    assert torch.equal(a.tiers, b.tiers)
    with pytest.raises(ValueError, match="fingerprint"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="fingerprint"):
        make_selector("sage", num_pairs=n, batch_size=3, total_steps=50).load_state_dict(
            _trained(difficulty=torch.zeros(n, dtype=torch.float64)).state_dict())
    c = make_selector("sage", num_pairs=n, batch_size=3, difficulty=d1, total_steps=50)
    c.load_state_dict(a.state_dict())  # the same arguments load


@pytest.mark.parametrize("name", ["sage", "dpo_full", "static_low_gap"])
def test_state_with_wrong_tensor_shapes_is_refused_and_leaves_the_selector_unchanged(name):
    a = _trained(name)
    good = a.state_dict()
    for path, bad in [
        (("book", "u"), torch.zeros(7, dtype=torch.float64)),
        (("book", "history"), torch.zeros(30, 5, dtype=torch.float64)),
        (("book", "invalid"), torch.zeros(30, dtype=torch.float32)),
        (("fields", "_received"), torch.zeros(31, dtype=torch.bool)),
        (("fields", "_pool"), torch.tensor([0, 99])),
        (("working", "working"), torch.zeros(3)),
        (("tiers",), torch.zeros(29, dtype=torch.int64)),
    ]:
        state = a.state_dict()
        d = state
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = bad
        fresh = _trained(name)
        before = fresh.state_dict()
        with pytest.raises(ValueError, match=path[-1].lstrip("_") if path[-1] != "_pool" else "shard"):
            fresh.load_state_dict(state)
        after = fresh.state_dict()
        assert torch.allclose(before["book"]["u"], after["book"]["u"], equal_nan=True)
        assert torch.equal(before["working"]["working"], after["working"]["working"])
    fresh = _trained(name)
    buf = io.BytesIO()
    torch.save(good, buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))  # the real state loads without pickled objects
