"""Fixtures for the veRL 0.9.1 adapter tests (run in .venv-verl by `make test-verl`).

Everything here is real veRL except TransferQueue's storage: ``FakeTransferQueue`` stands in for the
Ray-actor key-value store (starting Ray and TransferQueue's controller/storage actors on a 2-core CI box
takes minutes and is flaky); it keeps the same calls and return types (tags, jagged fields) that veRL's
ReplayBuffer uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

pytest.importorskip("verl", reason="the veRL adapter tests run in .venv-verl (make test-verl)")

import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from tensordict import NonTensorData, NonTensorStack, TensorDict  # noqa: E402

VERL_CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


@pytest.fixture
def ppo_config() -> Callable[..., Any]:
    """Compose veRL's packaged ppo_trainer config with overrides, as main_ppo does."""

    def compose_ppo(overrides: list[str]):
        with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
            return compose("ppo_trainer", overrides=list(overrides))

    return compose_ppo


class FakeTransferQueue:
    """In-memory stand-in for the ``transfer_queue`` module functions veRL's ReplayBuffer calls."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, dict]] = {}
        self.fields: dict[str, dict[str, dict[str, Any]]] = {}
        self.batch_get_calls: list[tuple[str, tuple[str, ...], int]] = []

    # -- the API surface used by verl.trainer.ppo.v1.replay_buffer and our sampler
    def kv_list(self, partition_id: str | None = None) -> dict[str, dict[str, dict]]:
        parts = self.tags if partition_id is None else {partition_id: self.tags.get(partition_id, {})}
        return {p: {k: dict(t) for k, t in items.items()} for p, items in parts.items()}

    def kv_batch_get(self, keys: list[str], partition_id: str, select_fields: list[str] | None = None) -> TensorDict:
        names = tuple(select_fields or ())
        self.batch_get_calls.append((partition_id, names, len(keys)))
        rows = [self.fields[partition_id][k] for k in keys]
        out = {}
        for name in names:
            if name not in rows[0]:
                continue
            values = [r[name] for r in rows]
            if isinstance(values[0], torch.Tensor):
                out[name] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            else:
                out[name] = NonTensorStack(*[NonTensorData(v) for v in values])
        return TensorDict(out, batch_size=[len(keys)])

    def kv_clear(self, keys: list[str], partition_id: str) -> None:
        for k in keys:
            self.tags.get(partition_id, {}).pop(k, None)
            self.fields.get(partition_id, {}).pop(k, None)

    # -- what the trainer and the agent loop would write
    def put_prompt(self, uid: str, partition_id: str, status: str, global_steps: int) -> None:
        self.tags.setdefault(partition_id, {})[uid] = {"is_prompt": True, "status": status, "global_steps": global_steps}

    def put_trajectory(self, key: str, partition_id: str, fields: dict[str, Any], global_steps: int) -> None:
        self.tags.setdefault(partition_id, {})[key] = {"status": "success", "global_steps": global_steps}
        self.fields.setdefault(partition_id, {})[key] = fields


class FakeRollout:
    """Plays the trainer's refill_fn + agent loop: each prompt finishes at once with scripted rewards.

    ``pass_counts[prompt]`` is a list of how many of the ``n`` samples pass on successive visits of that
    prompt (the last entry repeats). Prompts are served from ``order`` cyclically, like a dataloader epoch.
    """

    def __init__(self, tq: FakeTransferQueue, order: list[str], pass_counts: dict[str, list[int]], n: int = 4) -> None:
        self.tq, self.order, self.pass_counts, self.n = tq, order, pass_counts, n
        self.cursor = 0
        self.visits: dict[str, int] = {}
        self.global_steps = 1
        self.dispatched: list[str] = []
        self.uid_prompt: dict[str, str] = {}
        self._uid = 0

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        return torch.tensor([5 + (ord(c) % 100) for c in prompt], dtype=torch.long)

    def prompt_key(self, prompt: str) -> str:
        """The key the sampler derives from the stored prompt token ids."""
        from rlplugins.integrations.verl.sampler import _prompt_key

        return _prompt_key(self.prompt_ids(prompt))

    def __call__(self, num_prompts: int) -> int:
        for _ in range(num_prompts):
            prompt = self.order[self.cursor % len(self.order)]
            self.cursor += 1
            visit = self.visits.get(prompt, 0)
            self.visits[prompt] = visit + 1
            counts = self.pass_counts[prompt]
            passes = counts[min(visit, len(counts) - 1)]
            uid = f"uid{self._uid:05d}"
            self._uid += 1
            self.uid_prompt[uid] = prompt
            self.dispatched.append(uid)
            self.tq.put_prompt(uid, "train", "finished", self.global_steps)
            for s in range(self.n):
                reward = 1.0 if s < passes else 0.0
                self.tq.put_trajectory(
                    f"{uid}_{s}_0",
                    "train",
                    {
                        "rm_scores": torch.tensor([0.0, 0.0, reward]),  # reward on the last response token
                        "prompts": self.prompt_ids(prompt),
                        "extra_fields": {"reward_extra_info": {"acc": reward}},
                    },
                    self.global_steps,
                )
        return num_prompts


@pytest.fixture
def fake_tq(monkeypatch: pytest.MonkeyPatch) -> FakeTransferQueue:
    from verl.trainer.ppo.v1 import replay_buffer

    tq = FakeTransferQueue()
    monkeypatch.setattr(replay_buffer, "tq", tq)
    return tq


@pytest.fixture
def make_rollout(fake_tq: FakeTransferQueue) -> Callable[..., FakeRollout]:
    def make(order: list[str], pass_counts: dict[str, list[int]], n: int = 4) -> FakeRollout:
        return FakeRollout(fake_tq, order, pass_counts, n)

    return make


@pytest.fixture
def run_python(tmp_path: Path) -> Callable[..., Any]:
    """Run a snippet in a fresh interpreter of this venv (entry points and imports start from scratch)."""
    import os
    import subprocess

    def run(code: str, env: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=tmp_path
        )

    return run
