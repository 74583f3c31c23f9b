"""Core tests of the prompt-group selector (no framework import)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlplugins.selection.prompt_groups import (
    PromptGroupSelector,
    PromptGroupSelectorConfig,
    pass_rate_tier,
)


def scores(passes: int, n: int = 8) -> list[float]:
    return [1.0] * passes + [0.0] * (n - passes)


# ------------------------------------------------------------------------------------------ observation


def test_pass_rate_tier_and_degenerate_flags():
    sel = PromptGroupSelector()
    easy = sel.observe("g1", "p1", scores(7))
    medium = sel.observe("g2", "p2", scores(4))
    hard = sel.observe("g3", "p3", scores(1))
    all_right = sel.observe("g4", "p4", scores(8))
    all_wrong = sel.observe("g5", "p5", scores(0))
    assert (easy.pass_rate, easy.tier) == (7 / 8, 0)
    assert (medium.pass_rate, medium.tier) == (0.5, 1)
    assert (hard.pass_rate, hard.tier) == (1 / 8, 2)
    assert [o.degenerate for o in (easy, medium, hard, all_right, all_wrong)] == [False, False, False, True, True]
    assert sel.should_drop("g4") and sel.should_drop("g5") and not sel.should_drop("g2")
    assert not sel.should_drop("never-seen")


def test_tier_edges_are_half_open():
    edges = (1 / 3, 2 / 3)
    assert pass_rate_tier(2 / 3, edges) == 0  # p >= last edge: easy
    assert pass_rate_tier(1 / 3, edges) == 1
    assert pass_rate_tier(0.0, edges) == 2
    assert pass_rate_tier(1.0, edges) == 0


def test_success_threshold_decides_what_passes():
    sel = PromptGroupSelector(PromptGroupSelectorConfig(success_threshold=0.0))
    # -1/+1 rewards: three of four pass at threshold 0
    assert sel.observe("g", "p", [1.0, 1.0, 1.0, -1.0]).pass_rate == 0.75


def test_equal_scores_are_degenerate_like_dapo():
    sel = PromptGroupSelector()
    assert sel.observe("g", "p", [0.7, 0.7, 0.7]).degenerate  # std 0: DAPO drops it too
    # all correct but rewards differ (a length bonus): DAPO keeps it, we drop it (documented difference)
    assert sel.observe("h", "q", [1.0, 0.9, 0.8]).degenerate


def test_drop_degenerate_off_keeps_them_but_ranks_them_last():
    sel = PromptGroupSelector(PromptGroupSelectorConfig(drop_degenerate=False))
    sel.observe("all", "p1", scores(8))
    sel.observe("mid", "p2", scores(6))
    assert not sel.should_drop("all")
    assert sel.rank(["all", "mid"]) == ["mid", "all"]


def test_observe_is_idempotent_per_group():
    sel = PromptGroupSelector()
    first = sel.observe("g", "p", scores(4))
    again = sel.observe("g", "p", scores(1))  # a re-poll of the same finished group
    assert again == first
    assert sel.history("p") == (0.5,)


def test_history_is_bounded_and_lru_evicts_oldest_prompt():
    sel = PromptGroupSelector(PromptGroupSelectorConfig(history_size=2, max_prompts=2))
    for i, passes in enumerate([1, 2, 3]):
        sel.observe(f"a{i}", "A", scores(passes))
    assert sel.history("A") == (2 / 8, 3 / 8)
    sel.observe("b", "B", scores(4))
    sel.observe("c", "C", scores(4))  # third prompt: A (least recently seen) is forgotten
    assert sel.history("A") == () and sel.history("B") == (0.5,)


def test_rejects_bad_scores():
    sel = PromptGroupSelector()
    with pytest.raises(ValueError, match="no scores"):
        sel.observe("g", "p", [])
    with pytest.raises(ValueError, match="non-finite"):
        sel.observe("g", "p", [1.0, float("nan")])


# ------------------------------------------------------------------------------------------ ranking


def test_stable_groups_rank_before_unstable_ones():
    sel = PromptGroupSelector(PromptGroupSelectorConfig(curriculum=False))
    sel.observe("old", "flaky", scores(7))
    sel.select(["old"], 1)
    unstable = sel.observe("now", "flaky", scores(2))  # 0.875 -> 0.25: std 0.31 > 0.25
    stable = sel.observe("other", "steady", scores(7))
    assert not unstable.stable and stable.stable
    assert unstable.history_std == pytest.approx(0.3125)
    # the unstable group has the larger success variance and the harder tier, and still ranks last
    assert sel.rank(["now", "other"]) == ["other", "now"]


def test_frontier_first_inside_admitted_tiers_then_locked_tiers():
    sel = PromptGroupSelector()  # tiers: 0 easy, 1 medium admitted; 2 hard locked until competence >= 0.5
    assert sel.admitted_tiers == 2
    sel.observe("easy", "p1", scores(7))
    sel.observe("medium", "p2", scores(3))  # 0.375
    sel.observe("medium_best", "p3", scores(4))  # 0.5: larger p(1-p) in the same tier
    sel.observe("hard", "p4", scores(1))
    assert sel.rank(["easy", "medium", "medium_best", "hard"]) == ["medium_best", "medium", "easy", "hard"]


def test_unobserved_ids_rank_last_in_given_order():
    sel = PromptGroupSelector()
    sel.observe("g", "p", scores(4))
    assert sel.rank(["x", "g", "y"]) == ["g", "x", "y"]


def test_curriculum_unlocks_the_hard_tier_when_competence_reaches_threshold():
    cfg = PromptGroupSelectorConfig(competence_momentum=0.5)
    sel = PromptGroupSelector(cfg)
    # round 1: mean pass rate 0.25 -> competence 0.25, hard tier stays locked
    sel.observe("h1", "a", scores(1))
    sel.observe("m1", "b", scores(3))
    s1 = sel.select(["h1", "m1"], 1)
    assert s1.selected == ["m1"] and s1.metrics["admitted_tiers"] == 2 and s1.metrics["competence"] == 0.25
    # round 2: mean 1.0 (two all-correct groups) -> competence 0.625 >= 0.5: hard tier admitted
    sel.observe("e1", "c", scores(8))
    sel.observe("e2", "d", scores(8))
    s2 = sel.select([], 0)
    assert s2.metrics["competence"] == pytest.approx(0.625) and sel.admitted_tiers == 3
    # now the hard group is the frontier and ranks first
    sel.observe("h2", "e", scores(2))
    sel.observe("m2", "f", scores(4))
    assert sel.rank(["m2", "h2"]) == ["h2", "m2"]
    # admission never goes back, even if competence drops
    for i in range(5):
        sel.observe(f"z{i}", f"z{i}", scores(0))
        sel.select([], 0)
    assert sel.competence < 0.5 and sel.admitted_tiers == 3


def test_curriculum_off_admits_every_tier():
    sel = PromptGroupSelector(PromptGroupSelectorConfig(curriculum=False))
    assert sel.admitted_tiers == 3
    sel.observe("m", "a", scores(4))
    sel.observe("h", "b", scores(2))
    assert sel.rank(["m", "h"]) == ["h", "m"]


def test_select_consumes_selected_and_reports_metrics():
    sel = PromptGroupSelector()
    for i, passes in enumerate([7, 4, 3, 1]):
        sel.observe(f"g{i}", f"p{i}", scores(passes))
    out = sel.select([f"g{i}" for i in range(4)], 2)
    assert out.selected == ["g1", "g2"]
    assert sel.pending("g1") is None and sel.pending("g0") is not None
    m = out.metrics
    assert m["candidates"] == 4 and m["selected"] == 2
    assert m["selected_pass_rate_mean"] == pytest.approx((0.5 + 0.375) / 2)
    assert m["selected_unstable_frac"] == 0 and m["selected_locked_tier_frac"] == 0
    assert (m["candidates_tier0"], m["candidates_tier1"], m["candidates_tier2"]) == (1, 2, 1)
    assert m["observed"] == 4 and m["observed_pass_rate_mean"] == pytest.approx((7 + 4 + 3 + 1) / 32)
    with pytest.raises(ValueError, match="k must be"):
        sel.select(["g0"], -1)


@given(
    passes=st.lists(st.integers(0, 8), min_size=1, max_size=20),
    k=st.integers(0, 25),
    seed=st.integers(0, 10_000),
)
def test_select_returns_a_prefix_of_the_ranking_without_duplicates(passes, k, seed):
    rng = random.Random(seed)
    sel = PromptGroupSelector(PromptGroupSelectorConfig(curriculum=rng.random() < 0.5))
    prompts = [f"p{rng.randrange(5)}" for _ in passes]  # repeated prompts build histories
    obs = {}
    for i, (n_pass, prompt) in enumerate(zip(passes, prompts)):
        obs[f"g{i}"] = sel.observe(f"g{i}", prompt, scores(n_pass))
    ids = list(obs)
    ranked = sel.rank(ids)
    chosen = sel.select(ids, k).selected
    assert sorted(ranked) == sorted(ids)
    assert chosen == ranked[: min(k, len(ids))]
    assert len(set(chosen)) == len(chosen)
    # ordering invariants: non-degenerate before degenerate, then stable before unstable
    flags = [(obs[g].degenerate, not obs[g].stable) for g in ranked]
    assert flags == sorted(flags)


# ------------------------------------------------------------------------------------------ state


def _run_rounds(sel: PromptGroupSelector, rounds: list[list[tuple[str, int]]], start: int, k: int) -> list[list[str]]:
    out = []
    for r, groups in enumerate(rounds):
        ids = []
        for j, (prompt, n_pass) in enumerate(groups):
            gid = f"r{start + r}g{j}"
            sel.observe(gid, prompt, scores(n_pass))
            if sel.should_drop(gid):
                sel.discard([gid])
            else:
                ids.append(gid)
        # leave one candidate pending across the round boundary (what an async buffer does)
        out.append(sel.select(ids, k).selected)
    return out


@given(
    rounds=st.lists(
        st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.integers(0, 8)), min_size=1, max_size=6),
        min_size=2,
        max_size=8,
    ),
    split=st.integers(1, 7),
    k=st.integers(1, 4),
)
def test_state_round_trip_resumes_exactly(rounds, split, k):
    split = min(split, len(rounds) - 1)
    cfg = PromptGroupSelectorConfig(history_size=3, competence_momentum=0.5, unlock_at=(0.4,))
    straight = PromptGroupSelector(cfg)
    expected = _run_rounds(straight, rounds, 0, k)

    first = PromptGroupSelector(cfg)
    got = _run_rounds(first, rounds[:split], 0, k)
    state = json.loads(json.dumps(first.state_dict()))  # what the checkpoint file holds
    resumed = PromptGroupSelector(cfg)
    resumed.load_state_dict(state)
    got += _run_rounds(resumed, rounds[split:], split, k)
    assert got == expected
    assert resumed.state_dict() == straight.state_dict()


def test_state_keeps_pending_groups_so_a_resumed_buffer_does_not_observe_twice():
    sel = PromptGroupSelector()
    sel.observe("left", "p", scores(4))
    restored = PromptGroupSelector()
    restored.load_state_dict(json.loads(json.dumps(sel.state_dict())))
    restored.observe("left", "p", scores(4))
    assert restored.history("p") == (0.5,)
    assert restored.rank(["left"]) == ["left"]


def _as_version_1(sel: PromptGroupSelector) -> dict:
    """The state the previous release wrote (a [key, [pass rates]] list per prompt, least recently seen first)."""
    state = json.loads(json.dumps(sel.state_dict()))
    del state["prompts"]
    keys = sorted(sel._rows, key=lambda key: sel._stamp[sel._rows[key]])
    return {**state, "version": 1, "histories": [[key, list(sel.history(key))] for key in keys]}


@pytest.mark.parametrize("history_size,max_prompts", [(3, 100), (2, 100), (3, 4)])
def test_a_version_1_state_still_loads_and_resumes(history_size, max_prompts):
    """Checkpoints written before the array storage load; a smaller history_size / max_prompts cuts them as the
    old loader did (last entries, most recently seen prompts)."""
    rounds = [[("a", 1), ("b", 4), ("c", 8)], [("a", 3), ("d", 2)], [("b", 5), ("e", 0), ("a", 6)],
              [("c", 2), ("f", 3)], [("g", 1), ("d", 5), ("b", 2)]]
    cfg = PromptGroupSelectorConfig(history_size=3, competence_momentum=0.5, unlock_at=(0.4,))
    first = PromptGroupSelector(cfg)
    _run_rounds(first, rounds[:3], 0, 2)
    resumed_cfg = PromptGroupSelectorConfig(history_size=history_size, max_prompts=max_prompts,
                                            competence_momentum=0.5, unlock_at=(0.4,))
    old, new = PromptGroupSelector(resumed_cfg), PromptGroupSelector(resumed_cfg)
    old.load_state_dict(_as_version_1(first))
    new.load_state_dict(json.loads(json.dumps(first.state_dict())))
    kept = sorted(first._rows, key=lambda key: first._stamp[first._rows[key]])[-max_prompts:]
    for key in "abcde":
        want = first.history(key)[-history_size:] if key in kept else ()
        assert old.history(key) == want
    assert _run_rounds(old, rounds[3:], 3, 2) == _run_rounds(new, rounds[3:], 3, 2)
    for key in "abcdefg":  # the same prompts evicted afterwards (least recently seen first)
        assert old.history(key) == new.history(key)


@pytest.mark.parametrize("keys", [["p"], [""], ["a\x1fb", "c"], ["x", "", "y"]])
def test_state_round_trips_any_prompt_key(keys):
    sel = PromptGroupSelector()
    for j, key in enumerate(keys):
        sel.observe(f"g{j}", key, scores(j + 1))
    restored = PromptGroupSelector()
    restored.load_state_dict(json.loads(json.dumps(sel.state_dict())))
    assert [restored.history(k) for k in keys] == [sel.history(k) for k in keys] != [()] * len(keys)


def test_load_state_rejects_a_corrupted_history():
    state = json.loads(json.dumps(PromptGroupSelector().state_dict()))
    state["prompts"]["keys"] = ["x"]
    with pytest.raises(ValueError, match="prompts is inconsistent"):
        PromptGroupSelector().load_state_dict(state)


def test_load_state_rejects_unknown_version():
    with pytest.raises(ValueError, match="version"):
        PromptGroupSelector().load_state_dict({"version": 99})


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tier_edges": (0.7, 0.3)}, "tier_edges must be strictly increasing"),
        ({"tier_edges": (0.0, 0.5)}, r"tier_edges\[...\] must be in \(0, 1\), got 0.0"),
        ({"tier_edges": ()}, "at least one"),
        ({"history_size": 0}, r"history_size must be an int in \[1, inf\), got 0"),
        ({"stability_tau": -0.1}, r"stability_tau must be in \[0, inf\)"),
        ({"competence_momentum": 1.0}, r"competence_momentum must be in \[0, 1\), got 1.0"),
        ({"initial_tiers": 4}, "initial_tiers must be <= the number of tiers"),
        ({"unlock_at": (0.5, 0.6)}, "one competence threshold per locked tier"),
        ({"drop_degenerate": "yes"}, "drop_degenerate must be a bool"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PromptGroupSelectorConfig(**kwargs)


def test_config_from_mapping_suggests_the_closest_field():
    with pytest.raises(ValueError, match="Did you mean 'stability_tau'"):
        PromptGroupSelectorConfig.from_mapping({"stabilty_tau": 0.2})
    cfg = PromptGroupSelectorConfig.from_mapping({"tier_edges": [0.25, 0.5, 0.75], "unlock_at": [0.4, 0.6]})
    assert cfg.num_tiers == 4 and cfg.tier_edges == (0.25, 0.5, 0.75)
    assert PromptGroupSelector({"curriculum": False}).admitted_tiers == 3
