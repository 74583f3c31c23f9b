"""Opt-in: route veRL 0.9.1's log-prob and entropy computation through rlplugins' logits path
(``rlplugins.losses.logprobs_from_logits``, whose backend switch runs the Triton kernel ``token_logprobs`` on CUDA).

Off by default. Enable it with the environment variable ``RLPLUGINS_VERL_TOKEN_LOGPROBS=1`` in every veRL
process; on a Ray cluster forward it with::

    +ray_kwargs.ray_init.runtime_env.env_vars.RLPLUGINS_VERL_TOKEN_LOGPROBS='1'

veRL has no configuration field for replacing these functions, so the switch is an environment variable, read
when this adapter is imported: by the ``verl.plugins`` entry point (at ``import verl``, in every process), or by
``actor_rollout_ref.model.external_lib=rlplugins.integrations.verl`` / ``VERL_USE_EXTERNAL_MODULES``. Calling
``install()`` yourself before the actor engine is built works too.

What it replaces (the non-fused path of ``FSDPEngineWithLMHead.prepare_model_outputs``, i.e.
``model.use_fused_kernels=False``; the fused path never materialises logits and is left alone):

- ``verl.utils.torch_functional.logprobs_from_logits`` and every ``from ... import logprobs_from_logits`` copy
  already bound in a ``verl.*`` module, notably ``verl.workers.engine.fsdp.transformer_impl.logprobs_from_logits``
  (the module global the engine calls). Modules imported later copy the routed function.
- ``verl.utils.torch_functional.entropy_from_logits`` and ``entropy_from_logits_with_chunking``: the engine
  reads them as ``verl_F.<name>`` when it is constructed (``self.compute_entropy_from_logits``, optionally
  wrapped in ``torch.compile``) and, for ``entropy_from_logits``, again at call time on the padded path.
  Engines built before ``install()`` keep the original entropy function.

Each routed function calls the kernel for CUDA tensors it supports (float32/bfloat16/float16 plain tensors of
shape [N, V] or [B, T, V], integer labels of shape ``logits.shape[:-1]``) and veRL's original function otherwise,
so that enabling the switch on CPU changes nothing. The adapter only routes; the math is the kernel's:

- temperature: veRL divides the logits by the (per-token) temperature before calling these functions, so the
  kernel is called with ``temperature=1.0``, exactly like veRL's own implementations;
- log-probs are differentiable w.r.t. the logits and returned in float32 (as veRL's flash-attn path returns);
  the kernel's in-place backward is used only when veRL's original would itself have written the gradient into
  the logits (``inplace_backward=True`` requested and flash-attn's cross-entropy in use);
- entropy is differentiable and returned in the dtype veRL's original returns (the logits' dtype for
  ``entropy_from_logits``, float32 for ``entropy_from_logits_with_chunking``); the kernel is run with dummy
  labels (entropy does not depend on them) and its log-prob output is discarded.

``install()`` is idempotent, ``uninstall()`` restores veRL's functions, and a one-time warning-level log line
says the routing is installed.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

ENV_VAR = "RLPLUGINS_VERL_TOKEN_LOGPROBS"
TORCH_FUNCTIONAL = "verl.utils.torch_functional"
ROUTED_NAMES: tuple[str, ...] = ("logprobs_from_logits", "entropy_from_logits", "entropy_from_logits_with_chunking")

logger = logging.getLogger(__name__)

_originals: dict[str, Callable[..., Any]] = {}  # veRL's functions, captured at the first install
_state: dict[str, Any] = {
    "installed": False, "impl": None, "device_types": ("cuda",), "kernel_ok": False, "logged": False
}


def env_enabled() -> bool:
    return os.environ.get(ENV_VAR, "0").strip().lower() in ("1", "true", "yes", "on")


def core_logprobs(logits, labels, temperature: float, return_entropy: bool, inplace_backward: bool):
    """The core's backend switch (``rlplugins.losses.logprobs_from_logits``, ``backend="auto"``: the Triton kernel
    for the CUDA tensors routed here), with ``token_logprobs``'s positional contract."""
    from rlplugins.losses.from_logits import logprobs_from_logits

    out = logprobs_from_logits(logits, labels, temperature=temperature, return_entropy=return_entropy,
                               inplace_backward=inplace_backward, backend="auto")
    return (out.log_prob, out.entropy) if return_entropy else out.log_prob


def _kernel() -> Callable[..., Any]:
    impl = _state["impl"]
    if impl is None:
        impl = _state["impl"] = core_logprobs
    return impl


_LOGIT_DTYPES: tuple[Any, ...] = ()


def _supported(logits: Any, labels: Any = None) -> bool:
    """True for tensors the kernel handles on a routed device; anything else goes to veRL's original."""
    import torch

    global _LOGIT_DTYPES
    if not _LOGIT_DTYPES:
        _LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
    if not _state["kernel_ok"]:
        return False
    if type(logits) is not torch.Tensor or logits.is_nested:  # DTensor, nested, subclasses: not ours
        return False
    if logits.device.type not in _state["device_types"] or logits.dtype not in _LOGIT_DTYPES:
        return False
    if logits.dim() not in (2, 3) or logits.shape[-1] < 1:
        return False
    if labels is not None:
        if type(labels) is not torch.Tensor or labels.is_nested or labels.device != logits.device:
            return False
        if labels.dtype not in (torch.int64, torch.int32) or tuple(labels.shape) != tuple(logits.shape[:-1]):
            return False
    return True


def _verl_would_write_inplace(inplace_backward: bool) -> bool:
    """Whether veRL's own logprobs_from_logits would overwrite the logits with their gradient."""
    if not inplace_backward:
        return False
    verl_f = sys.modules.get(TORCH_FUNCTIONAL)
    return bool(getattr(verl_f, "FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE", False)) and (
        os.environ.get("VERL_DISABLE_FLASH_ATTN_CE", "0") != "1"
    )


def _call_kernel(logits, labels, return_entropy: bool, inplace_backward: bool):
    if not _state["logged"]:
        _state["logged"] = True
        logger.warning(
            "rlplugins: veRL log-probs/entropy now computed by %s (%s logits)", _impl_name(), logits.device.type,
        )
    return _kernel()(logits, labels, 1.0, return_entropy, inplace_backward)


def _impl_name() -> str:
    impl = _state["impl"]
    if impl is None:
        return "rlplugins.losses.logprobs_from_logits (Triton kernel on CUDA)"
    return getattr(impl, "__qualname__", None) or type(impl).__qualname__


def _compile_disable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Keep torch.compile (the engine compiles the entropy function by default) out of the kernel call."""
    try:
        import torch

        return torch.compiler.disable(fn)
    except (ImportError, AttributeError):  # pragma: no cover - old torch
        return fn


_call_kernel = _compile_disable(_call_kernel)


def logprobs_from_logits(logits, labels, inplace_backward=True):
    """Routed ``verl.utils.torch_functional.logprobs_from_logits`` (same signature)."""
    if _supported(logits, labels):
        return _call_kernel(logits, labels, False, _verl_would_write_inplace(inplace_backward))
    return _originals["logprobs_from_logits"](logits, labels, inplace_backward=inplace_backward)


def entropy_from_logits(logits):
    """Routed ``verl.utils.torch_functional.entropy_from_logits`` (same signature and output dtype)."""
    if _supported(logits):
        import torch

        labels = torch.zeros(logits.shape[:-1], dtype=torch.int64, device=logits.device)
        return _call_kernel(logits, labels, True, False)[1].to(logits.dtype)
    return _originals["entropy_from_logits"](logits)


def entropy_from_logits_with_chunking(logits, chunk_size: int = 2048):
    """Routed ``verl.utils.torch_functional.entropy_from_logits_with_chunking`` (float32 out, as veRL's).

    The kernel keeps O(rows) memory, so ``chunk_size`` only matters for the fallback."""
    if _supported(logits) and logits.dim() == 2:
        import torch

        labels = torch.zeros(logits.shape[:-1], dtype=torch.int64, device=logits.device)
        return _call_kernel(logits, labels, True, False)[1]
    return _originals["entropy_from_logits_with_chunking"](logits, chunk_size=chunk_size)


ROUTERS: dict[str, Callable[..., Any]] = {
    "logprobs_from_logits": logprobs_from_logits,
    "entropy_from_logits": entropy_from_logits,
    "entropy_from_logits_with_chunking": entropy_from_logits_with_chunking,
}


def _verl_modules() -> list[Any]:
    return [m for name, m in list(sys.modules.items()) if m is not None and (name == "verl" or name.startswith("verl."))]


def _rebind(old_for: Callable[[str], Any], new_for: Callable[[str], Any]) -> list[str]:
    """Replace, in every loaded verl.* module, each routed name bound to old_for(name) by new_for(name)."""
    changed = []
    for module in _verl_modules():
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name in ROUTED_NAMES:
            if name in namespace and namespace[name] is old_for(name):
                setattr(module, name, new_for(name))
                changed.append(f"{module.__name__}.{name}")
    return changed


def install(*, impl: Callable[..., Any] | None = None, device_types: tuple[str, ...] = ("cuda",)) -> list[str]:
    """Route veRL's log-prob/entropy functions; returns the bindings replaced by this call (idempotent).

    ``impl`` (default ``core_logprobs``: the core's backend switch, i.e. the Triton kernel on CUDA) and ``device_types`` (default CUDA only) exist for
    tests that stand a CPU implementation in for the kernel."""
    import importlib
    import importlib.util

    from .version import check_verl_version

    check_verl_version()
    # The engine module is not imported here: this runs inside ``import verl`` (entry point), where importing
    # the engine would create veRL's device platform too early. A verl module imported later copies the routed
    # function (``from verl.utils.torch_functional import logprobs_from_logits``); loaded ones are rebound below.
    verl_f = importlib.import_module(TORCH_FUNCTIONAL)
    for name in ROUTED_NAMES:
        current = getattr(verl_f, name)
        if current is not ROUTERS[name]:
            _originals[name] = current
    _state["impl"] = impl
    _state["device_types"] = tuple(device_types)
    _state["kernel_ok"] = impl is not None or importlib.util.find_spec("triton") is not None
    if not _state["kernel_ok"] and not _state["installed"]:
        logger.warning("rlplugins: %s=1 but triton is not installed: every call falls back to veRL's functions", ENV_VAR)
    changed = _rebind(lambda n: _originals[n], lambda n: ROUTERS[n])
    if not _state["installed"]:
        _state["installed"] = True
        logger.warning(
            "rlplugins: routing veRL %s through %s for %s tensors",
            ", ".join(ROUTED_NAMES), _impl_name(), "/".join(_state["device_types"]),
        )
    return changed


def uninstall() -> list[str]:
    """Restore veRL's functions in every verl.* module that holds a routed one; returns the bindings restored."""
    if not _originals:
        return []
    changed = _rebind(lambda n: ROUTERS[n], lambda n: _originals[n])
    _state.update(installed=False, impl=None, device_types=("cuda",), kernel_ok=False, logged=False)
    return changed


def is_installed() -> bool:
    verl_f = sys.modules.get(TORCH_FUNCTIONAL)
    return verl_f is not None and all(getattr(verl_f, n, None) is ROUTERS[n] for n in ROUTED_NAMES)


def install_from_env() -> bool:
    """Install when ``RLPLUGINS_VERL_TOKEN_LOGPROBS=1``; returns whether the routing is installed."""
    if not env_enabled():
        return False
    try:
        install()
    except Exception as exc:  # veRL's entry-point loader would swallow it silently: say it here
        logger.warning("rlplugins: %s=1 but the routing could not be installed: %r", ENV_VAR, exc)
        raise
    return True


# Names exported by the package (rlplugins.integrations.verl.install_token_logprobs / uninstall_token_logprobs).
install_token_logprobs = install
uninstall_token_logprobs = uninstall
