"""Inputs and the implementations the kernel benchmark compares (one loss: per-token gate + aggregation, forward
and backward down to the logits, bfloat16 logits), and their accuracy against float64."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

from rlplugins.losses import agg_loss, make_config, policy_loss_from_logits, token_policy_loss
from rlplugins.losses.chunked_logprobs import chunked_token_logprobs

TEMPERATURE = 0.9
SEQ_LEN = 1024  # tokens are laid out as [tokens / SEQ_LEN, SEQ_LEN] sequences
LIGER_LOSS_TYPE = {"sapo": "sapo", "ppo_clip": "dapo"}
GPU_PROVIDERS = ["torch-eager", "torch-compile", "torch-chunked", "torch-chunked-inplace", "ours-composed",
                 "ours-fused", "ours-fused-inplace", "liger"]
CPU_PROVIDERS = ["torch-eager", "torch-compile", "torch-chunked", "torch-chunked-inplace"]
INPLACE = {"torch-chunked-inplace", "ours-fused-inplace", "liger"}
COMPILED = {"torch-compile"}
NAIVE = "torch-eager"


def agg_mode_for(loss: str) -> str:
    # SAPO as its authors/veRL/Liger aggregate it (per-sequence mean); the others DAPO-style token mean.
    return "seq-mean-token-mean" if loss == "sapo" else "token-mean"


def interpreter() -> bool:
    """With --interpret (TRITON_INTERPRET=1) the Triton providers run on CPU: a smoke test, not a timing."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def needs_gpu(provider: str, device: torch.device) -> bool:
    return (provider.startswith("ours") or provider == "liger") and device.type != "cuda" and not interpreter()


class _GradSink(torch.autograd.Function):
    """Identity whose backward receives the logits gradient and drops it, as lm_head's backward would consume
    it: keeps autograd from copying an in-place gradient into ``.grad``."""

    @staticmethod
    def forward(ctx, logits, anchor):
        return logits.detach()

    @staticmethod
    def backward(ctx, grad):
        return None, None


@dataclass
class Inputs:
    """HF's layout: ``full`` is [B, T+1, V] and every provider but Liger reads the strided view ``full[:, :-1]``
    (no copy; Liger takes ``full`` and ignores the last position itself)."""

    full: torch.Tensor
    pristine: torch.Tensor | None  # copy restored before each repetition (in-place providers overwrite ``full``)
    labels: torch.Tensor
    old: torch.Tensor
    adv: torch.Tensor
    mask: torch.Tensor
    anchor: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        return self.full[:, :-1]

    def restore(self) -> None:
        if self.pristine is not None:
            self.full.copy_(self.pristine)

    def leaf(self) -> torch.Tensor:
        return _GradSink.apply(self.logits, self.anchor)

    def leaf_full(self) -> torch.Tensor:
        return _GradSink.apply(self.full, self.anchor)


def make_inputs(tokens: int, vocab: int, device: torch.device, dtype=torch.bfloat16, seed: int = 0,
                keep_pristine: bool = True) -> Inputs:
    """Random logits (std 2), labels, old log-probs within ~0.3 of the current ones (some clipped), per-sequence
    advantages, ~5% right padding."""
    b, t = max(1, tokens // SEQ_LEN), min(tokens, SEQ_LEN)
    g = torch.Generator(device=device).manual_seed(seed)
    full = torch.empty(b, t + 1, vocab, device=device, dtype=dtype)
    for i in range(b):  # one sequence at a time: no float32 [tokens, vocab] temporary
        full[i] = (torch.randn(t + 1, vocab, generator=g, device=device) * 2).to(dtype)
    labels = torch.randint(0, vocab, (b, t), generator=g, device=device)
    with torch.no_grad():
        logp = chunked_token_logprobs(full[:, :-1], labels, TEMPERATURE)
    old = (logp + 0.3 * torch.randn(b, t, generator=g, device=device)).contiguous()
    adv = torch.randn(b, 1, generator=g, device=device).expand(b, t).contiguous()
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    mask[:, t - max(1, t // 20):] = False
    pristine = full.clone() if keep_pristine else None
    anchor = torch.zeros((), device=device, requires_grad=True)
    return Inputs(full, pristine, labels, old, adv, mask, anchor)


def logits_bytes_of(tokens: int, vocab: int) -> int:
    return max(1, tokens // SEQ_LEN) * min(tokens, SEQ_LEN) * vocab * 2


def _core_loss(name: str, logp: torch.Tensor, inp: Inputs, cfg) -> torch.Tensor:
    tok = token_policy_loss(name, log_prob=logp, old_log_prob=inp.old, advantages=inp.adv, config=cfg)
    return agg_loss(tok.loss, inp.mask, agg_mode_for(name))


def _eager_fn(name: str, cfg, compute_dtype=torch.float32) -> Callable[..., torch.Tensor]:
    def run(logits, labels, old, adv, mask):
        x = logits.to(compute_dtype) / TEMPERATURE
        logp = torch.log_softmax(x, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        tok = token_policy_loss(name, log_prob=logp, old_log_prob=old, advantages=adv, config=cfg)
        return agg_loss(tok.loss, mask, agg_mode_for(name))

    return run


def build_provider(provider: str, name: str) -> Callable[[Inputs], torch.Tensor] | str:
    """A forward function ``inputs -> scalar loss`` or a string saying why the provider cannot run."""
    cfg = make_config(name)
    if provider == "torch-eager":
        fn = _eager_fn(name, cfg)
        return lambda inp: fn(inp.leaf(), inp.labels, inp.old, inp.adv, inp.mask)
    if provider == "torch-compile":
        compiled = torch.compile(_eager_fn(name, cfg), dynamic=False)
        return lambda inp: compiled(inp.leaf(), inp.labels, inp.old, inp.adv, inp.mask)
    if provider in ("torch-chunked", "torch-chunked-inplace"):
        # The public entry point, as a user calls it (masked labels ignored, the core's loss and metrics).
        inplace = provider.endswith("inplace")
        return lambda inp: policy_loss_from_logits(
            name, logits=inp.leaf(), labels=inp.labels, old_log_prob=inp.old, advantages=inp.adv,
            response_mask=inp.mask, loss_agg_mode=agg_mode_for(name), config=cfg, temperature=TEMPERATURE,
            inplace_backward=inplace, backend="torch").loss
    if provider.startswith("ours"):
        if importlib.util.find_spec("triton") is None:
            return "triton not installed"
        from rlplugins import kernels

        if provider == "ours-composed":
            return lambda inp: _core_loss(name, kernels.token_logprobs(inp.leaf(), inp.labels, TEMPERATURE), inp, cfg)
        inplace = provider.endswith("inplace")
        return lambda inp: agg_loss(kernels.fused_policy_loss(
            inp.leaf(), inp.labels, inp.old, inp.adv, inp.mask, name, cfg, TEMPERATURE,
            inplace_backward=inplace).token_loss, inp.mask, agg_mode_for(name))
    if provider == "liger":
        if name not in LIGER_LOSS_TYPE:
            return f"Liger has no {name} loss"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel not installed (pip install liger-kernel)"
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss

        def run(inp: Inputs) -> torch.Tensor:
            loss, _ = triton_grpo_loss(inp.leaf_full(), inp.old, None, inp.labels, inp.adv[:, 0].contiguous(),
                                       inp.mask.float(), temperature=TEMPERATURE, beta=0.0, eps_low=0.2,
                                       eps_high=0.2, inplace=True, loss_type=LIGER_LOSS_TYPE[name], reduce=True)
            return loss

        return run
    raise ValueError(f"unknown provider {provider!r}")


def accuracy(providers: list[str], name: str, tokens: int, vocab: int, device: torch.device) -> list[dict]:
    """Errors of the loss and of dlogits against float64 (eager on the upcast logits), per provider."""
    inp = make_inputs(tokens, vocab, device, seed=1)
    z64 = inp.pristine[:, :-1].to(torch.float64).requires_grad_()
    cfg = make_config(name)
    ref = _eager_fn(name, cfg, torch.float64)(z64, inp.labels, inp.old.double(), inp.adv.double(), inp.mask)
    ref.backward()
    grads: list[torch.Tensor] = []

    class Capture(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, anchor):
            return logits.detach()

        @staticmethod
        def backward(ctx, grad):
            grads.append(grad.detach().to(torch.float64))
            return None, None

    out = []
    for provider in providers:
        fn = build_provider(provider, name)
        if isinstance(fn, str) or needs_gpu(provider, device):
            continue
        inp.restore()
        grads.clear()
        inp.leaf = lambda: Capture.apply(inp.logits, inp.anchor)  # type: ignore[method-assign]
        inp.leaf_full = lambda: Capture.apply(inp.full, inp.anchor)  # type: ignore[method-assign]
        loss = fn(inp)
        loss.backward()
        dz = grads[0][:, : z64.shape[1]]
        err = (dz - z64.grad).abs()
        out.append({"provider": provider, "loss": name, "tokens": tokens, "vocab": vocab,
                    "loss_abs_err": abs(float(loss.detach()) - float(ref.detach())),
                    "dlogits_max_abs_err": float(err.max()),
                    "dlogits_rms_rel_err": float(err.pow(2).mean().sqrt() / z64.grad.pow(2).mean().sqrt())})
    return out
