"""CPU stand-ins for the two OpenRLHF dependencies that cannot exist on a CPU machine.

- flash_attn: no CPU build (its metadata step needs CUDA; a forced build fails at import on
  flash_attn_2_cuda). OpenRLHF imports it unconditionally (models/actor.py -> ring_attn_utils.py), only
  calling it with --ds.packing_samples / ring attention, which the tests never enable.
- vllm: 0.29 wheels are CUDA builds; openrlhf.trainer.ray imports it for the rollout engines, which the
  tests never start.

Everything else (DeepSpeed, Ray, transformers, peft) is the real package. A stub is installed only when the
real module cannot be imported, so the same tests run unchanged on a GPU machine with the real packages.
This module lives in tests/ on purpose: nothing in rlplugins stubs anything.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from unittest import mock


def _stubbed(name: str):
    def fn(*args, **kwargs):
        raise RuntimeError(f"{name} is stubbed on CPU (flash_attn is not installable without CUDA)")

    fn.__name__ = name.rsplit(".", 1)[-1]
    return fn


def _module(name: str, is_package: bool) -> types.ModuleType:
    module = types.ModuleType(name)
    # transformers calls importlib.util.find_spec("flash_attn"): a module without __spec__ makes it raise.
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=is_package)
    if is_package:
        module.__path__ = []
    return module


def _real(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install() -> None:
    if not _real("flash_attn"):
        flash_attn = _module("flash_attn", True)
        utils = _module("flash_attn.utils", True)
        bert_padding = _module("flash_attn.bert_padding", False)
        for fn in ("index_first_axis", "pad_input", "rearrange", "unpad_input"):
            setattr(bert_padding, fn, _stubbed(f"flash_attn.bert_padding.{fn}"))
        distributed = _module("flash_attn.utils.distributed", False)
        distributed.all_gather = _stubbed("flash_attn.utils.distributed.all_gather")
        flash_attn.flash_attn_varlen_func = _stubbed("flash_attn.flash_attn_varlen_func")
        flash_attn.flash_attn_func = _stubbed("flash_attn.flash_attn_func")
        flash_attn.utils, flash_attn.bert_padding, utils.distributed = utils, bert_padding, distributed
        sys.modules.update({
            "flash_attn": flash_attn,
            "flash_attn.utils": utils,
            "flash_attn.bert_padding": bert_padding,
            "flash_attn.utils.distributed": distributed,
        })
    if not _real("vllm"):
        for name in ("vllm", "vllm.inputs", "vllm.utils"):
            stub = mock.MagicMock(name=name)
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name == "vllm")
            stub.__version__ = "0.29.0"
            sys.modules[name] = stub
