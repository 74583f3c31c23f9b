"""Frozen selection sequences: the O(batch) rewrite of the selectors (issue 16) must not change what they select.

``golden_selection.json`` was written by the selectors *before* that rewrite (pool mode, baselines, the prompt-group
selector) and records, per scenario, every scoring request, every batch and the metrics at a few steps. Pool mode and
the baselines must reproduce it exactly; online mode draws its candidates without a permutation of the pool since the
rewrite, so its scenarios were re-recorded then (docs/selection-api.md#3-the-protocol-what-the-training-loop-does-each-step).
Resume is checked against the same record: a selector saved at step k, loaded into a fresh one and continued gives
the uninterrupted sequence; ``golden_selector_state.pt`` is a state saved by the pre-rewrite code and must still load.

Regenerate (only when a selection change is intended, and say so in the commit):
``PYTHONSAFEPATH=1 .venv/bin/python tests/selection/test_selection_golden.py --write [--only online]``
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from rlplugins.selection import SageConfig, make_selector
from rlplugins.selection.prompt_groups import PromptGroupSelector, PromptGroupSelectorConfig

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden_selection.json"
OLD_STATE = HERE / "golden_selector_state.pt"
N, B, STEPS, BETA = 240, 8, 36, 0.1
METRIC_STEPS = (0, 1, 5, 11, 20, 35)


def _u(idx: torch.Tensor, t: int) -> torch.Tensor:
    """Deterministic margins: a per-pair level that drifts with t, some sign flips, a few NaN (pairs 7 mod 53)."""
    i = idx.to(torch.float64)
    u = torch.sin(i * 0.731 + 1.3) * 2.0 + torch.cos(i * 0.117) * 0.5 + 0.03 * t * torch.sin(i * 0.29)
    u = u - 0.4 * (idx % 5 == 0).to(torch.float64) * (t % 3)
    return torch.where((idx % 53 == 7) & (torch.tensor(t) % 4 == 1), torch.full_like(u, math.nan), u)


def _logps(idx: torch.Tensor, t: int):
    u = _u(idx, t) / BETA
    pc = -20.0 - 0.01 * idx.to(torch.float64)
    rr = -25.0 + 0.02 * idx.to(torch.float64)
    # policy source: u = beta (pc - pr); implicit: beta ((pc - rc) - (pr - rr)); rc = pc - u/2 makes both informative
    return pc, pc - u, pc - u / 2, rr


def _difficulty() -> torch.Tensor:
    return torch.rand(N, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


SCENARIOS: dict[str, dict] = {
    "sage_pool": dict(name="sage", cfg={}, diff=True),
    "sage_pool_seed3": dict(name="sage", cfg={"seed": 3}, diff=True),
    "sage_pool_sample": dict(name="sage", cfg={"selection_mode": "sample", "seed": 1}, diff=True),
    "sage_pool_rescore_pool": dict(name="sage", cfg={"rescore_scope": "pool", "rescore_interval": 4}, diff=True),
    "sage_pool_implicit": dict(name="sage", cfg={"margin_source": "implicit", "competence_source": "pool",
                                                 "rescore_interval": None}, diff=True),
    "sage_pool_schedule": dict(name="sage", cfg={"refresh_mode": "schedule", "schedule_c0": 0.3}, diff=True),
    "sage_pool_rank1": dict(name="sage", cfg={"seed": 5}, diff=True, replicas=2, rank=1),
    "sage_pool_chunked": dict(name="sage", cfg={"rescore_scope": "pool", "rescore_interval": 3}, diff=True, chunk=7),
    "sage_pool_noobserve": dict(name="sage", cfg={"variance_threshold": 0.5, "history_size": 3}, diff=True,
                                observe=False),
    "sage_no_curriculum": dict(name="sage_no_curriculum", cfg={}, diff=False),
    "sage_no_filter": dict(name="sage_no_filter", cfg={}, diff=True),
    "signal_only": dict(name="signal_only", cfg={"selection_mode": "sample"}, diff=True),
    "dynamic_loss": dict(name="dynamic_loss", cfg={"rescore_interval": 5}, diff=False),
    "dpo_full": dict(name="dpo_full", cfg={}, diff=False),
    "random_subset": dict(name="random_subset", cfg={"seed": 2}, diff=False),
    "static_curriculum": dict(name="static_curriculum", cfg={}, diff=True),
    "selective_dpo": dict(name="selective_dpo", cfg={}, diff=True),
    "static_low_gap": dict(name="static_low_gap", cfg={"warmup_steps": 3}, diff=False),
    "static_high_margin": dict(name="static_high_margin", cfg={}, diff=False),
    "sage_online": dict(name="sage", cfg={"granularity": "online"}, diff=True, online=True),
    "sage_online_sample": dict(name="sage", cfg={"granularity": "online", "selection_mode": "sample",
                                                 "selection_ratio": 0.25, "seed": 4}, diff=True, online=True),
    "sage_online_schedule": dict(name="sage", cfg={"granularity": "online", "refresh_mode": "schedule"}, diff=True,
                                 online=True),
}


def _build(sc: dict):
    return make_selector(
        sc["name"], num_pairs=N, batch_size=B, config=SageConfig(**sc["cfg"]),
        difficulty=_difficulty() if sc["diff"] else None, total_steps=STEPS,
        rank=sc.get("rank", 0), num_replicas=sc.get("replicas", 1),
    )


def _metrics(sel) -> dict[str, float]:
    # compare by metric name whether or not the core prefixes it (the prefix moved to the adapters)
    return {k.removeprefix("selector/"): v for k, v in sel.metrics().items()}


def _run(sel, sc: dict, start: int, stop: int) -> dict:
    chunk = sc.get("chunk")
    out: dict = {"requests": [], "batches": [], "metrics": {}}
    for t in range(start, stop):
        reqs = []
        while (idx := sel.indices_to_score()).numel() > 0:
            reqs.append(idx.tolist())
            parts = [idx] if chunk is None else list(torch.split(idx, chunk))
            for part in parts:
                sel.update_scores(part, *_logps(part, t))
        b = sel.next_batch()
        if sc.get("observe", True):
            sel.observe_batch(b, *_logps(b, t + 1))
        out["requests"].append(reqs)
        out["batches"].append(b.tolist())
        if t in METRIC_STEPS:
            out["metrics"][str(t)] = _metrics(sel)
    return out


def _prompt_group_run(cfg: dict) -> dict:
    sel = PromptGroupSelector(PromptGroupSelectorConfig(**cfg))
    g = torch.Generator().manual_seed(7)
    out: dict = {"selected": [], "metrics": []}
    for step in range(30):
        ids = []
        for j in range(12):
            key = f"p{int(torch.randint(0, 20, (1,), generator=g))}"
            n = 4
            scores = torch.rand(n, generator=g).tolist()
            gid = f"s{step}g{j}"
            sel.observe(gid, key, scores)
            if not sel.should_drop(gid):
                ids.append(gid)
        s = sel.select(ids, 5)
        sel.discard(ids)
        out["selected"].append(s.selected)
        out["metrics"].append(s.metrics)
    out["state"] = {"competence": sel.competence, "admitted": sel.admitted_tiers,
                    "histories": {f"p{k}": list(sel.history(f"p{k}")) for k in range(20)}}
    return out


PROMPT_SCENARIOS = {
    "prompt_default": {},
    "prompt_lru": {"max_prompts": 7, "history_size": 2, "stability_tau": 0.1},
    "prompt_no_curriculum": {"curriculum": False, "drop_degenerate": False},
}


def _record(only: str | None) -> dict:
    data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    for key, sc in SCENARIOS.items():
        if only == "online" and not sc.get("online"):
            continue
        data[key] = _run(_build(sc), sc, 0, STEPS)
    if only is None:
        for key, cfg in PROMPT_SCENARIOS.items():
            data[key] = _prompt_group_run(cfg)
        sc = SCENARIOS["sage_pool"]
        sel = _build(sc)
        _run(sel, sc, 0, 13)
        torch.save(sel.state_dict(), OLD_STATE)
    return data


def _same(a, b) -> bool:
    """Exact equality of nested JSON data, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_selection_sequence_is_frozen(golden, key):
    sc = SCENARIOS[key]
    got = json.loads(json.dumps(_run(_build(sc), sc, 0, STEPS)))
    want = golden[key]
    for field in ("requests", "batches"):
        for t, (g, w) in enumerate(zip(got[field], want[field])):
            assert g == w, f"{key}: {field} differ first at step {t}"
    for t in want["metrics"]:
        assert _same(got["metrics"][t], want["metrics"][t]), f"{key}: metrics differ at step {t}"


@pytest.mark.parametrize("key", ["sage_pool", "sage_pool_rescore_pool", "sage_pool_chunked", "sage_online",
                                 "sage_online_sample", "static_low_gap", "static_curriculum", "dynamic_loss"])
@pytest.mark.parametrize("k", [2, 13])
def test_resume_continues_the_frozen_sequence(golden, key, k):
    sc = SCENARIOS[key]
    sel = _build(sc)
    _run(sel, sc, 0, k)
    fresh = _build(sc)
    fresh.load_state_dict(_roundtrip(sel.state_dict()))
    got = json.loads(json.dumps(_run(fresh, sc, k, STEPS)))
    assert got["batches"] == golden[key]["batches"][k:]
    assert got["requests"] == golden[key]["requests"][k:]


def test_state_saved_by_the_previous_release_still_resumes(golden):
    """A checkpoint written before the O(batch) rewrite loads and continues the recorded sequence exactly."""
    sc = SCENARIOS["sage_pool"]
    fresh = _build(sc)
    fresh.load_state_dict(torch.load(OLD_STATE, weights_only=True))
    got = json.loads(json.dumps(_run(fresh, sc, 13, STEPS)))
    assert got["batches"] == golden["sage_pool"]["batches"][13:]


@pytest.mark.parametrize("key", ["sage_online", "sage_online_sample", "sage_online_schedule"])
def test_online_mode_with_the_permutation_draw_is_the_pre_rewrite_sequence(golden, key, monkeypatch):
    """Online mode's only change: how candidates are drawn. With the old draw (a permutation of the pool's valid
    pairs) it reproduces the pre-rewrite record exactly, so its cached pool statistics are exact on small pools."""
    import rlplugins.selection.selector as selector_module

    monkeypatch.setattr(selector_module, "take_random_valid", lambda *args, **kwargs: None)
    sc = SCENARIOS[key]
    got = json.loads(json.dumps(_run(_build(sc), sc, 0, STEPS)))
    want = golden[key + "_permutation_draw"]
    assert got["batches"] == want["batches"] and got["requests"] == want["requests"]
    assert all(_same(got["metrics"][t], want["metrics"][t]) for t in want["metrics"])


@pytest.mark.parametrize("k", [3, 8])
def test_online_resume_is_exact_while_the_pool_statistics_are_stale(k):
    """A large pool (statistics recomputed every few steps, not every step): the cached view is part of the state."""
    n = 2400
    cfg = SageConfig(granularity="online", seed=9)
    diff = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def build():
        return make_selector("sage", num_pairs=n, batch_size=B, config=cfg, difficulty=diff)

    sc = {"observe": True}
    ref_sel = build()
    ref = _run(ref_sel, sc, 0, 16)
    assert ref_sel._online_view["version"] < 10  # fewer recomputations than steps: the cache was really used
    sel = build()
    _run(sel, sc, 0, k)
    assert sel._dirty > 0 and sel._online_view is not None  # margins fed since the last recomputation
    fresh = build()
    fresh.load_state_dict(_roundtrip(sel.state_dict()))
    got = _run(fresh, sc, k, 16)
    assert got["batches"] == ref["batches"][k:] and got["requests"] == ref["requests"][k:]
    assert _same(got["metrics"], {t: v for t, v in ref["metrics"].items() if int(t) >= k})


@pytest.mark.parametrize("key", sorted(PROMPT_SCENARIOS))
def test_prompt_group_selection_is_frozen(golden, key):
    got = json.loads(json.dumps(_prompt_group_run(PROMPT_SCENARIOS[key])))
    assert _same(got, golden[key])


if __name__ == "__main__":
    if "--write" not in sys.argv:
        raise SystemExit(__doc__)
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    GOLDEN.write_text(json.dumps(_record(only), separators=(",", ":")))
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
