"""A toy RLVR setting that runs on a CPU in seconds: a verifiable task, a tiny GRU policy, GRPO training.

The task: the prompt is a sequence of ``1..max_len`` digits (base ``base``), the answer is the same digits
in reverse order, and the reward is 1 if the answer matches exactly, else 0 (binary, verifiable). Prompt
lengths are drawn uniformly, so the batch mixes difficulty tiers: a random policy solves a length-1
prompt with probability ``1/base`` and a length-``L`` one with ``base**-L``. The first answer digit is the
last prompt digit whatever the length, so what is learnt on short prompts transfers to long ones.

One training step is the veRL actor loop in miniature (docs/maspo.md#the-demo-a-toy-rlvr-run):

1. sample ``prompts_per_step`` prompts and ``group_size`` responses each at temperature 1;
2. verify them and compute GRPO group-normalised advantages;
3. recompute ``old_log_prob`` with the policy, mini-batch by mini-batch, *before* any update (as veRL's
   actor does), so the first mini-batch sees a ratio of exactly 1;
4. make one optimiser step per mini-batch, ``minibatches`` of them per epoch for ``epochs`` epochs (veRL's
   ``ppo_epochs``): every step after the first is off-policy, which is where the gated losses differ from
   plain policy gradient (with one mini-batch and one epoch the ratio is 1 and MASPO *is* PG).

Measured along the way: the exact entropy of the rollout policy on the answer tokens (each step), greedy
accuracy on a fixed held-out set (every ``eval_every`` steps) and, at the last evaluations, mean@k / pass@k
from ``eval_k`` samples per held-out prompt at temperature 1.

Nothing here is downloaded; everything is seeded with explicit generators so a run is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ._config import ConfigMixin, check_int, check_number
from .losses import compute_policy_loss, grpo_advantages

# Per-step metrics averaged over the mini-batch updates of a step (keys of compute_policy_loss's metrics).
LOSS_METRICS = ("ppo_kl", "gate_mean", "gate_min", "damp_frac", "ratio_max", "pg_clipfrac", "eff_weight_mean",
                "quad_pos_frac", "quad_neg_frac")


@dataclass(frozen=True)
class ReverseTask(ConfigMixin):
    """Reverse a digit sequence. ``max_len`` digits at most, digits in ``[0, base)``."""

    base: int = 6
    max_len: int = 5
    min_len: int = 1

    def __post_init__(self) -> None:
        check_int("ReverseTask", "base", self.base, low=2, high=64)
        check_int("ReverseTask", "min_len", self.min_len, low=1)
        check_int("ReverseTask", "max_len", self.max_len, low=1, high=32)
        if self.min_len > self.max_len:
            raise ValueError(f"ReverseTask needs 1 <= min_len <= max_len <= 32, got {self.min_len}, {self.max_len}")

    # Input vocabulary: digits, then PAD (left padding of short prompts), then SEP (end of prompt).
    @property
    def pad(self) -> int:
        return self.base

    @property
    def sep(self) -> int:
        return self.base + 1

    @property
    def in_vocab(self) -> int:
        return self.base + 2

    def sample_prompts(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompts [n, max_len] left-padded with PAD, lengths [n])``."""
        lengths = torch.randint(self.min_len, self.max_len + 1, (n,), generator=generator)
        digits = torch.randint(0, self.base, (n, self.max_len), generator=generator)
        pos = torch.arange(self.max_len)
        is_pad = pos[None, :] < (self.max_len - lengths)[:, None]
        return torch.where(is_pad, torch.full_like(digits, self.pad), digits), lengths

    def targets(self, prompts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[n, max_len]`` reversed digits; positions ``>= length`` are don't-care (0)."""
        # The prompt is right-aligned, so reversing the whole row puts its digits first.
        rev = prompts.flip(1)
        return torch.where(self.answer_mask(lengths), rev, torch.zeros_like(rev))

    def answer_mask(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.max_len)[None, :] < lengths[:, None]

    def reward(self, prompts: torch.Tensor, lengths: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """1.0 where the first ``length`` response digits equal the reversed prompt exactly, else 0.0."""
        ok = (responses == self.targets(prompts, lengths)) | ~self.answer_mask(lengths)
        return ok.all(dim=1).to(torch.float32)


class TinyPolicy(nn.Module):
    """A one-layer GRU language model: reads ``prompt, SEP`` and emits answer digits one by one."""

    def __init__(self, task: ReverseTask, hidden: int = 64, embed: int = 32):
        super().__init__()
        self.task = task
        self.embed = nn.Embedding(task.in_vocab, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, task.base)

    def _context(self, prompts: torch.Tensor) -> torch.Tensor:
        sep = torch.full((prompts.shape[0], 1), self.task.sep, dtype=prompts.dtype)
        return torch.cat([prompts, sep], dim=1)

    def log_probs(self, prompts: torch.Tensor, responses: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Teacher-forced ``log pi(response_t | prompt, response_<t)``, ``[n, max_len]``, float32."""
        tokens = torch.cat([self._context(prompts), responses[:, :-1]], dim=1)
        out, _ = self.gru(self.embed(tokens))
        logits = self.head(out[:, prompts.shape[1]:]) / temperature
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def generate(
        self,
        prompts: torch.Tensor,
        generator: torch.Generator | None,
        temperature: float = 1.0,
        greedy: bool = False,
        return_entropy: bool = False,
    ):
        """Sample (or take the arg-max of) ``max_len`` answer digits; ``[n, max_len]`` int64.

        With ``return_entropy``, also the entropy (nats) of each step's sampling distribution, ``[n, max_len]``
        float32: what veRL logs as ``actor/entropy``, here exact rather than estimated from the samples.
        """
        out, h = self.gru(self.embed(self._context(prompts)))
        last = out[:, -1]
        steps, entropies = [], []
        for t in range(self.task.max_len):
            logits = self.head(last)
            if greedy:
                tok = logits.argmax(-1)
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            if return_entropy:
                logp = torch.log_softmax(logits.float() / temperature, dim=-1)
                entropies.append(-(logp.exp() * logp).sum(-1))
            steps.append(tok)
            if t + 1 < self.task.max_len:
                step_out, h = self.gru(self.embed(tok)[:, None], h)
                last = step_out[:, 0]
        tokens = torch.stack(steps, dim=1)
        return (tokens, torch.stack(entropies, dim=1)) if return_entropy else tokens


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """One shared setting for every loss (a fair comparison changes only the loss)."""

    steps: int = 160  # 25 runs (5 losses x 5 seeds) of 160 steps: about 3 minutes on 2 idle cores
    prompts_per_step: int = 32
    group_size: int = 8
    # 8 mini-batches x 2 epochs = 16 optimiser steps per rollout batch, the paper's count (512 prompts,
    # mini-batch 32, docs/maspo.md#recommended-settings); 15 of the 16 are off-policy.
    minibatches: int = 8
    epochs: int = 2
    lr: float = 3e-3
    grad_clip: float = 1.0
    hidden: int = 64
    embed: int = 32
    eval_every: int = 10
    eval_prompts: int = 512
    eval_seed: int = 1234
    # Sampled evaluation (temperature 1, the rollout temperature): k responses per held-out prompt give mean@k
    # (mean accuracy) and pass@k (share of prompts with at least one correct), at the last ``sampled_evals``
    # evaluations only (the curve itself is greedy, which is cheap).
    eval_k: int = 16
    sampled_evals: int = 3
    loss_agg_mode: str = "token-mean"
    task: ReverseTask = field(default_factory=ReverseTask)

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "group_size", "minibatches", "epochs", "eval_every", "eval_prompts", "hidden", "embed",
                     "eval_k", "sampled_evals"):
            check_int("TrainConfig", name, getattr(self, name), low=1)
        if self.prompts_per_step % self.minibatches:
            raise ValueError(
                f"TrainConfig.prompts_per_step={self.prompts_per_step} must be a multiple of "
                f"minibatches={self.minibatches} (each mini-batch holds whole GRPO groups)"
            )
        check_number("TrainConfig", "lr", self.lr, low=0.0, low_inclusive=False)


def eval_set(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed evaluation set, the same for every loss and seed."""
    return cfg.task.sample_prompts(cfg.eval_prompts, torch.Generator().manual_seed(cfg.eval_seed))


@torch.no_grad()
def evaluate(policy: TinyPolicy, prompts: torch.Tensor, lengths: torch.Tensor, by_length: bool = False):
    """Greedy accuracy (exact match) on ``prompts``; with ``by_length``, a dict ``{length: accuracy}``."""
    responses = policy.generate(prompts, None, greedy=True)
    correct = policy.task.reward(prompts, lengths, responses)
    if by_length:
        return {str(L): float(correct[lengths == L].mean()) for L in sorted(set(lengths.tolist()))}
    return float(correct.mean())


@torch.no_grad()
def evaluate_sampled(
    policy: TinyPolicy, prompts: torch.Tensor, lengths: torch.Tensor, k: int, generator: torch.Generator,
    temperature: float = 1.0,
) -> dict[str, float]:
    """``k`` samples per prompt at ``temperature``: ``mean@k`` (mean exact-match accuracy over all samples),
    ``pass@k`` (share of prompts with at least one exact match among its k), the paper's Avg@k / Pass@k."""
    n = prompts.shape[0]
    rep_p, rep_l = prompts.repeat_interleave(k, dim=0), lengths.repeat_interleave(k, dim=0)
    correct = policy.task.reward(rep_p, rep_l, policy.generate(rep_p, generator, temperature)).view(n, k)
    return {"mean_at_k": float(correct.mean()), "pass_at_k": float(correct.amax(dim=1).mean())}


def train(
    loss_name: str,
    seed: int,
    cfg: TrainConfig,
    *,
    loss_config: Any = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train a fresh policy with policy loss ``loss_name``; returns the curves and per-step loss metrics.

    The initial weights, the prompt stream and the sampling stream depend only on ``seed``, so two losses
    with the same seed start from the same policy and see the same first batch.
    """
    task = cfg.task
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = TinyPolicy(task, hidden=cfg.hidden, embed=cfg.embed)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    prompt_gen = torch.Generator().manual_seed(2 * seed + 1)
    sample_gen = torch.Generator().manual_seed(2 * seed + 2)
    ev_prompts, ev_lengths = eval_set(cfg)
    rows_per_mb = cfg.prompts_per_step * cfg.group_size // cfg.minibatches

    eval_steps, eval_reward = [0], [evaluate(policy, ev_prompts, ev_lengths)]
    planned_evals = [s for s in range(1, cfg.steps + 1) if s % cfg.eval_every == 0 or s == cfg.steps]
    sampled_at = set(planned_evals[-cfg.sampled_evals:])
    sampled: dict[str, list] = {"steps": [], "mean_at_k": [], "pass_at_k": []}
    train_reward: list[float] = []
    entropy: list[float] = []  # mean per-token entropy of the rollout policy over the answer tokens, per step
    step_metrics: dict[str, list[float]] = {k: [] for k in LOSS_METRICS}
    # The same metrics over the off-policy mini-batches only (index >= 1); the first one has ratio 1.
    offpolicy_metrics: dict[str, list[float]] = {k: [] for k in LOSS_METRICS}
    first_mb_kl: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(1, cfg.steps + 1):
        prompts, lengths = task.sample_prompts(cfg.prompts_per_step, prompt_gen)
        prompts = prompts.repeat_interleave(cfg.group_size, dim=0)  # groups contiguous
        lengths = lengths.repeat_interleave(cfg.group_size, dim=0)
        responses, ent = policy.generate(prompts, sample_gen, return_entropy=True)
        rewards = task.reward(prompts, lengths, responses)
        train_reward.append(float(rewards.mean()))
        mask = task.answer_mask(lengths)
        entropy.append(float(ent[mask].mean()))
        adv = grpo_advantages(rewards, cfg.group_size)[:, None].expand_as(mask).contiguous()

        chunks = [slice(i * rows_per_mb, (i + 1) * rows_per_mb) for i in range(cfg.minibatches)]
        with torch.no_grad():  # actor recompute of old_log_prob, with the same mini-batch shapes as the updates
            old = torch.cat([policy.log_probs(prompts[c], responses[c]) for c in chunks])

        per_mb: list[dict[str, float]] = []
        for c in [c for _ in range(cfg.epochs) for c in chunks]:
            log_prob = policy.log_probs(prompts[c], responses[c])
            loss, metrics = compute_policy_loss(
                loss_name,
                log_prob=log_prob,
                old_log_prob=old[c],
                advantages=adv[c],
                response_mask=mask[c],
                loss_agg_mode=cfg.loss_agg_mode,
                config=loss_config,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
            per_mb.append(metrics)
        first_mb_kl.append(per_mb[0]["ppo_kl"])
        for k in LOSS_METRICS:
            step_metrics[k].append(sum(m[k] for m in per_mb) / len(per_mb))
            if len(per_mb) > 1:
                offpolicy_metrics[k].append(sum(m[k] for m in per_mb[1:]) / (len(per_mb) - 1))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            eval_steps.append(step)
            eval_reward.append(evaluate(policy, ev_prompts, ev_lengths))
        if step in sampled_at:
            # Seeded by (seed, step) only: every loss with this seed draws from the same random stream.
            gen = torch.Generator().manual_seed(cfg.eval_seed + 100_003 * seed + step)
            res = evaluate_sampled(policy, ev_prompts, ev_lengths, cfg.eval_k, gen)
            sampled["steps"].append(step)
            for key, value in res.items():
                sampled[key].append(value)
        if on_step is not None:
            on_step(step)

    return {
        "loss": loss_name,
        "seed": seed,
        "eval_steps": eval_steps,
        "eval_reward": eval_reward,
        "train_reward": train_reward,
        "entropy": entropy,
        "sampled_eval": sampled,
        "metrics": step_metrics,
        "offpolicy_metrics": offpolicy_metrics,
        "first_minibatch_ppo_kl": first_mb_kl,
        "final_eval_by_length": evaluate(policy, ev_prompts, ev_lengths, by_length=True),
        "num_params": sum(p.numel() for p in policy.parameters()),
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,  # this process's CPU time: comparable across machine loads
        "policy": policy,
    }
