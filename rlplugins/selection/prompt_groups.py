"""Prompt-group selection for online RL (GRPO-style groups): SAGE's ideas applied to rollout groups.

A *group* is the n sampled responses of one prompt, each with a scalar score (the rule-based reward).
The selector sees every finished group once (``observe``), then picks ``k`` of the candidates for the next
update (``select``). Framework-agnostic: ids and scores in, ids out; veRL's replay buffer wraps it
(``rlplugins.integrations.verl.sampler``).

What it does, per group with pass rate p = (# scores >= success_threshold) / n:

1. **Drops degenerate groups** (``drop_degenerate``): p = 0 (all wrong) or p = 1 (all right). With binary
   rewards GRPO gives such a group zero advantage, so it costs a backward pass for no signal. This contains
   DAPO's dynamic-sampling filter (std of the group's metric = 0: equal scores cannot straddle the
   threshold) and widens it: a group that is all correct but whose rewards differ (e.g. a length bonus) is
   dropped here and kept by DAPO.
2. **Competence tiers**: p >= tier_edges[-1] is tier 0 (easy), ..., p < tier_edges[0] is the hardest tier.
   A curriculum (SAGE's refreshable pools, [reconstruction]) admits the ``initial_tiers`` easiest tiers and
   one more each time the competence, an exponential moving average of the mean pass rate over all observed
   groups (one update per ``select``), reaches the next entry of ``unlock_at``. Admission never goes back.
3. **Stability**: each prompt (``prompt_key``, stable across epochs, unlike a rollout uid) keeps its last
   ``history_size`` pass rates. A prompt whose history has a population std above ``stability_tau``
   (e.g. it went 0.9 -> 0.2) is *unstable*: its advantage signs are not reliable (SAGE's temporal filter).
4. **Ranking** of the non-degenerate candidates, best first: stable before unstable; admitted tiers before
   locked ones; inside the admitted tiers the hardest first (the frontier, SAGE's "informative errors"),
   locked tiers nearest-first; then the success variance p (1 - p) (the lower bound on the expected
   improvement of Bae et al., arXiv 2504.03380), then arrival order. ``select`` takes the first ``k``.

Selection only chooses *among* candidates: it needs a surplus (more finished groups than the batch) to
change anything beyond step 1. The veRL wrapper creates one by refilling evicted groups and, optionally, by
over-dispatching prompts (SAGE's online batch variant: draw B / rho candidates, keep the best B).

State (histories, competence, admitted tiers, pending observations) round-trips through ``state_dict`` /
``load_state_dict`` as plain JSON-compatible data, so a resumed run makes the same choices. The per-prompt
histories live in one array (a row per prompt, a dict from prompt key to row, a last-seen stamp per row for the LRU
bound), and the state holds them as base64 strings, so saving and loading a million prompts builds no per-prompt Python objects (version 2; a version-1
state, with a list per prompt, still loads).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rlplugins._config import check_int

from .prompt_config import PromptGroupSelectorConfig
from .prompt_state import MIN_ROWS as _MIN_ROWS
from .prompt_state import b64 as _b64
from .prompt_state import decode_prompts as _decode_prompts
from .prompt_state import decode_version_1 as _decode_version_1
from .prompt_state import fit_histories as _fit_histories
from .prompt_state import join_keys as _join_keys

STATE_VERSION = 2
# Keys load_state_dict reads (besides "version"); "config" is informative only. Version 1 had "histories" (a
# [key, [pass rates]] list per prompt) where version 2 has "prompts" (keys, histories as base64 float64 rows, lengths).
_STATE_KEYS = ("prompts", "pending", "order", "competence", "admitted_tiers", "round", "rounds")
_STATE_KEYS_V1 = ("histories",) + _STATE_KEYS[1:]


@dataclass(frozen=True)
class GroupObservation:
    """What the selector recorded about one finished group."""

    group_id: str
    prompt_key: str
    pass_rate: float
    num_samples: int
    tier: int
    history_std: float
    stable: bool
    degenerate: bool
    order: int

    @property
    def success_variance(self) -> float:
        return self.pass_rate * (1.0 - self.pass_rate)


@dataclass(frozen=True)
class Selection:
    selected: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def pass_rate_tier(pass_rate: float, tier_edges: Sequence[float]) -> int:
    """0 = easiest (p >= last edge) ... len(tier_edges) = hardest (p < first edge)."""
    return sum(1 for edge in tier_edges if pass_rate < edge)


class PromptGroupSelector:
    """Stateful selector over finished prompt groups; see the module docstring for the rules."""

    def __init__(self, config: PromptGroupSelectorConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = PromptGroupSelectorConfig()
        elif isinstance(config, Mapping):
            config = PromptGroupSelectorConfig.from_mapping(config)
        elif not isinstance(config, PromptGroupSelectorConfig):
            raise TypeError(f"config must be a PromptGroupSelectorConfig, a mapping or None, got {type(config).__name__}")
        self.config = config
        # per-prompt pass-rate histories: row self._rows[key] of self._hist (oldest first), self._len[row] entries,
        # self._stamp[row] when the prompt was last seen; rows are dense (0 .. len-1), self._keys[row] is the key
        self._rows: dict[str, int] = {}
        self._keys: list[str] = []
        self._hist = np.full((0, config.history_size), np.nan)
        self._len = np.zeros(0, dtype=np.int64)
        self._stamp = np.zeros(0, dtype=np.int64)
        self._clock = 0
        # LRU queue: (row, stamp) of every touch in time order, stale entries skipped; None = rebuild from the stamps
        self._lru: tuple[deque, deque] | None = (deque(), deque())
        self._pending: dict[str, GroupObservation] = {}
        self._order = 0
        self._competence: float | None = None
        self._admitted = config.initial_tiers if config.curriculum else config.num_tiers
        self._round_sum = 0.0
        self._round_count = 0
        self._round_degenerate = 0
        self._rounds = 0

    # ------------------------------------------------------------------ observing

    @property
    def competence(self) -> float | None:
        return self._competence

    @property
    def admitted_tiers(self) -> int:
        return self._admitted

    def pending(self, group_id: str) -> GroupObservation | None:
        return self._pending.get(group_id)

    def history(self, prompt_key: str) -> tuple[float, ...]:
        row = self._rows.get(prompt_key)
        return () if row is None else tuple(self._hist[row, : self._len[row]].tolist())

    def _row_for(self, prompt_key: str) -> int:
        """The history row of ``prompt_key``, stamped as the most recently seen; a new prompt takes a new row or, at
        ``max_prompts``, the row of the least recently seen prompt (bounded LRU)."""
        self._clock += 1
        row = self._rows.get(prompt_key)
        if row is None:
            if len(self._rows) >= self.config.max_prompts:
                row = self._evict_least_recent()
                self._keys[row] = prompt_key
            else:
                row = len(self._rows)  # rows stay dense: one is freed only to be reused at once
                if row >= self._hist.shape[0]:
                    self._grow(min(self.config.max_prompts, max(_MIN_ROWS, 2 * self._hist.shape[0])))
                self._keys.append(prompt_key)
            self._rows[prompt_key] = row
            self._len[row] = 0
        self._stamp[row] = self._clock
        if self._lru is not None:
            rows, stamps = self._lru
            rows.append(row)
            stamps.append(self._clock)
            if len(rows) > 2 * len(self._rows) + _MIN_ROWS:
                self._lru = None  # mostly stale entries: rebuilt from the stamps at the next eviction
        return row

    def _grow(self, cap: int) -> None:
        n = self._hist.shape[0]
        self._hist = np.concatenate([self._hist, np.full((cap - n, self._hist.shape[1]), np.nan)])
        self._len = np.concatenate([self._len, np.zeros(cap - n, dtype=np.int64)])
        self._stamp = np.concatenate([self._stamp, np.zeros(cap - n, dtype=np.int64)])

    def _evict_least_recent(self) -> int:
        if self._lru is None:
            order = np.argsort(self._stamp[: len(self._rows)], kind="stable")
            self._lru = (deque(order.tolist()), deque(self._stamp[order].tolist()))
        rows, stamps = self._lru
        while True:
            row, stamp = rows.popleft(), stamps.popleft()
            if self._stamp[row] == stamp:
                del self._rows[self._keys[row]]
                return row

    def observe(self, group_id: str, prompt_key: str, scores: Sequence[float]) -> GroupObservation:
        """Record a finished group once; observing the same ``group_id`` again returns the stored record."""
        known = self._pending.get(group_id)
        if known is not None:
            return known
        values = [float(s) for s in scores]
        if not values:
            raise ValueError(f"group {group_id!r} has no scores; observe groups with at least one trajectory")
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"group {group_id!r} has non-finite scores {bad[:3]}")
        cfg = self.config
        passes = sum(1 for v in values if v >= cfg.success_threshold)
        p = passes / len(values)
        row = self._row_for(prompt_key)
        h, n_hist = self._hist[row], int(self._len[row])
        if n_hist < cfg.history_size:
            h[n_hist] = p
            n_hist += 1
            self._len[row] = n_hist
        else:
            h[:-1] = h[1:].copy()
            h[-1] = p
        history = h[:n_hist].tolist()
        std = _pstdev(history)
        # p in {0, 1} covers DAPO's criterion too: equal scores cannot straddle the threshold.
        degenerate = p in (0.0, 1.0)
        obs = GroupObservation(
            group_id=group_id,
            prompt_key=prompt_key,
            pass_rate=p,
            num_samples=len(values),
            tier=pass_rate_tier(p, cfg.tier_edges),
            history_std=std,
            stable=len(history) < 2 or std <= cfg.stability_tau,
            degenerate=degenerate,
            order=self._order,
        )
        self._order += 1
        self._pending[group_id] = obs
        self._round_sum += p
        self._round_count += 1
        self._round_degenerate += int(degenerate)
        return obs

    def should_drop(self, group_id: str) -> bool:
        """True for an observed degenerate group when ``drop_degenerate`` is on (evict it, refill)."""
        obs = self._pending.get(group_id)
        return bool(obs is not None and obs.degenerate and self.config.drop_degenerate)

    def discard(self, group_ids: Iterable[str]) -> None:
        """Forget pending observations of groups that left the buffer unselected (evicted, surplus)."""
        for gid in group_ids:
            self._pending.pop(gid, None)

    # ------------------------------------------------------------------ selecting

    def _rank_key(self, obs: GroupObservation) -> tuple:
        admitted = obs.tier < self._admitted
        return (
            obs.degenerate,
            not obs.stable,
            not admitted,
            -obs.tier if admitted else obs.tier,
            -obs.success_variance,
            obs.order,
        )

    def rank(self, group_ids: Iterable[str]) -> list[str]:
        """Best first; ids never observed (no trajectories) come last, in the given order."""
        ids = list(dict.fromkeys(group_ids))
        known = sorted((self._pending[g] for g in ids if g in self._pending), key=self._rank_key)
        return [o.group_id for o in known] + [g for g in ids if g not in self._pending]

    def select(self, group_ids: Iterable[str], k: int) -> Selection:
        """Pick ``k`` of ``group_ids``, close the round (competence, curriculum), report metrics.

        The selected groups leave the pending set; the others stay pending (the caller discards them if it
        drops them). Degenerate groups are ranked last, so they are taken only when nothing else is left.
        """
        check_int("", "k", k, low=0)
        ranked = self.rank(group_ids)
        chosen = ranked[:k]
        chosen_obs = [self._pending[g] for g in chosen if g in self._pending]
        candidates = [self._pending[g] for g in ranked if g in self._pending]
        metrics: dict[str, float] = {
            "candidates": float(len(ranked)),
            "selected": float(len(chosen)),
        }
        if chosen_obs:
            n = float(len(chosen_obs))
            metrics.update(
                selected_pass_rate_mean=sum(o.pass_rate for o in chosen_obs) / n,
                selected_unstable_frac=sum(not o.stable for o in chosen_obs) / n,
                selected_locked_tier_frac=sum(o.tier >= self._admitted for o in chosen_obs) / n,
                selected_degenerate_frac=sum(o.degenerate for o in chosen_obs) / n,
            )
        for tier in range(self.config.num_tiers):
            metrics[f"candidates_tier{tier}"] = float(sum(o.tier == tier for o in candidates))
        self.discard(chosen)
        metrics.update(self._close_round())
        return Selection(selected=chosen, metrics=metrics)

    def _close_round(self) -> dict[str, float]:
        cfg = self.config
        metrics: dict[str, float] = {"observed": float(self._round_count), "degenerate": float(self._round_degenerate)}
        if self._round_count:
            mean = self._round_sum / self._round_count
            metrics["observed_pass_rate_mean"] = mean
            m = cfg.competence_momentum
            self._competence = mean if self._competence is None else m * self._competence + (1.0 - m) * mean
        if cfg.curriculum and self._competence is not None:
            while self._admitted < cfg.num_tiers:
                threshold = cfg.unlock_at[self._admitted - cfg.initial_tiers]
                if self._competence < threshold:
                    break
                self._admitted += 1
        self._round_sum, self._round_count, self._round_degenerate = 0.0, 0, 0
        self._rounds += 1
        if self._competence is not None:
            metrics["competence"] = self._competence
        metrics["admitted_tiers"] = float(self._admitted)
        return metrics

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-compatible state: everything ``select`` depends on (per-prompt arrays as base64 strings)."""
        n = len(self._rows)
        return {
            "version": STATE_VERSION,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()},
            "prompts": {
                "keys": _join_keys(self._keys[:n]),
                "history_size": int(self._hist.shape[1]),
                "history": _b64(self._hist[:n], "<f8"),
                "lengths": _b64(self._len[:n], "<u2"),
                "last_seen": _b64(self._stamp[:n], "<i8"),
                "clock": self._clock,
            },
            "pending": [asdict(o) for o in sorted(self._pending.values(), key=lambda o: o.order)],
            "order": self._order,
            "competence": self._competence,
            "admitted_tiers": self._admitted,
            "round": [self._round_sum, self._round_count, self._round_degenerate],
            "rounds": self._rounds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output (version 2, or version 1 written by earlier releases). The selector keeps
        its own config (a resumed run may change it: histories are cut to ``history_size``, the least recently seen
        prompts beyond ``max_prompts`` are dropped)."""
        version = state.get("version") if isinstance(state, Mapping) else None
        if version not in (1, STATE_VERSION):
            found = version if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"PromptGroupSelector state must have version 1 or {STATE_VERSION}, got {found!r}")
        keys_needed = _STATE_KEYS if version == STATE_VERSION else _STATE_KEYS_V1
        missing = [k for k in keys_needed if k not in state]
        if missing:
            raise ValueError(f"PromptGroupSelector state lacks key(s) {', '.join(missing)}: pass the dict returned by "
                             f"state_dict() (keys: {', '.join(keys_needed)})")
        cfg = self.config
        if version == 1:
            keys, hist, lens, stamps, clock = _decode_version_1(state["histories"], cfg.history_size)
        else:
            keys, hist, lens, stamps, clock = _decode_prompts(state["prompts"])
        keys, hist, lens, stamps = _fit_histories(keys, hist, lens, stamps, cfg.history_size, cfg.max_prompts)
        rows = dict(zip(keys, range(len(keys))))
        if len(rows) != len(keys):
            raise ValueError("PromptGroupSelector state field prompts holds a prompt key twice")
        pending = {}
        for item in state["pending"]:
            obs = GroupObservation(**item)
            pending[obs.group_id] = obs
        round_sum, round_count, round_degenerate = state["round"]
        self._rows, self._keys, self._hist, self._len, self._stamp = rows, keys, hist, lens, stamps
        self._clock, self._lru = clock, None
        self._pending = pending
        self._order = int(state["order"])
        self._competence = None if state["competence"] is None else float(state["competence"])
        self._admitted = min(max(int(state["admitted_tiers"]), 1), cfg.num_tiers)
        if not cfg.curriculum:
            self._admitted = cfg.num_tiers
        self._round_sum, self._round_count, self._round_degenerate = float(round_sum), int(round_count), int(round_degenerate)
        self._rounds = int(state["rounds"])


def _pstdev(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


__all__ = [
    "GroupObservation",
    "PromptGroupSelector",
    "PromptGroupSelectorConfig",
    "Selection",
    "pass_rate_tier",
]
