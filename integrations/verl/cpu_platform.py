"""CPU shims for running veRL 0.9.1's actor worker in one process without a GPU (used by ``rlplugins verl-smoke``
and its data-parallel mode): a CPU platform, the FSDP engine registered for CPU, gloo, memory-stat stubs.

Nothing else in rlplugins touches veRL's device handling. Call ``set_single_process_env`` before veRL is imported.
"""

from __future__ import annotations

import os
import socket
from contextlib import closing


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_single_process_env() -> None:
    # A one-rank "cluster": veRL's Worker reads these; MASTER_PORT must be free on this machine.
    os.environ.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        VERL_PLATFORM="cpu",
        TOKENIZERS_PARALLELISM="false",
    )


def install_cpu_platform() -> None:
    """veRL 0.9.1 ships cuda/npu/rocm platforms only; register and select a CPU one (gloo backend)."""
    from contextlib import contextmanager

    import torch
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry, set_platform

    if PlatformRegistry.get("cpu") is None:

        @PlatformRegistry.register(platform="cpu")
        class PlatformCPU(PlatformBase):  # noqa: F841  (registered by the decorator)
            device_name = "cpu"
            vendor_name = "cpu"
            device_module = torch.cpu

            def is_available(self) -> bool:
                return True

            def current_device(self):
                return "cpu"

            def device_count(self) -> int:
                return 1

            def set_device(self, device_index) -> None:
                return None

            def synchronize(self, device_index=None) -> None:
                return None

            def manual_seed(self, seed: int) -> None:
                torch.manual_seed(seed)

            def manual_seed_all(self, seed: int) -> None:
                torch.manual_seed(seed)

            def set_allocator_settings(self, settings: str) -> None:
                return None

            def empty_cache(self) -> None:
                return None

            def get_device_capability(self, device_index: int = 0):
                return (None, None)

            def communication_backend_name(self) -> str:
                return "gloo"

            def visible_devices_envvar(self) -> str:
                return "CPU_VISIBLE_DEVICES"

            @contextmanager
            def nvtx_range(self, msg: str):
                yield

            def profiler_start(self) -> None:
                return None

            def profiler_stop(self) -> None:
                return None

            def ray_resource_name(self) -> str:
                return "CPU"

            def ray_noset_envvars(self) -> list[str]:
                return []

            def is_ipc_supported(self) -> bool:
                return False

            def cudart(self):
                return None

    set_platform(PlatformRegistry.get("cpu")())

    # veRL calls <device module>.empty_cache() and its memory statistics directly; torch.cpu lacks them.
    for name in ("max_memory_allocated", "max_memory_reserved", "memory_allocated", "memory_reserved"):
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, lambda *args, **kwargs: 0)
    for name in ("empty_cache", "reset_peak_memory_stats"):
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, lambda *args, **kwargs: None)


def register_cpu_engine() -> None:
    """The FSDP engine registers for cuda/npu only; the same class runs on CPU with gloo."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    registry = EngineRegistry._engines.setdefault("language_model", {})
    missing = [b for b in ("fsdp", "fsdp2") if "cpu" not in registry.get(b, {})]
    if missing:
        EngineRegistry.register(model_type="language_model", backend=missing, device="cpu")(FSDPEngineWithLMHead)


def init_gloo() -> None:
    # Initialised here, before the worker: otherwise veRL builds the backend string "cpu:gloo,cpu:gloo".
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)
