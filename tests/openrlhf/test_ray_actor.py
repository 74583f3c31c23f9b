"""The actor-class swap in a real local Ray cluster: the policy worker runs our subclass, and its override runs
in the worker process (not on the driver), reading the loss choice from the pickled strategy.args.

One fake GPU (``ray.init(num_gpus=1)``) satisfies ``@ray.remote(num_gpus=1)``; no CUDA call happens before our
override. Workers are fresh processes, so they get the flash_attn/vLLM stubs from a worker setup hook.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from types import SimpleNamespace

import pytest
import ray
import rlp_openrlhf_stubs

import openrlhf.trainer.ray.ppo_actor as ppo_actor
from openrlhf.trainer.ray.launcher import RayActorGroup
from rlplugins.integrations.openrlhf import ray_actor

SUPPORT = os.path.dirname(os.path.abspath(rlp_openrlhf_stubs.__file__))


@pytest.fixture
def local_ray(monkeypatch):
    temp_dir = tempfile.mkdtemp(prefix="rlp-ray-")  # short: Ray's socket paths must fit in 107 bytes
    # Ray puts the driver's working directory on its workers' sys.path; from the repo root that would expose our
    # top-level kernels/ directory as a package named `kernels`, which transformers mistakes for HF's `kernels`.
    monkeypatch.chdir(temp_dir)
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir,
             runtime_env={"env_vars": {"PYTHONPATH": SUPPORT, "TOKENIZERS_PARALLELISM": "false"},
                          "worker_process_setup_hook": "rlp_openrlhf_stubs.install"})
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_policy_workers_run_our_actor_class(local_ray, monkeypatch):
    monkeypatch.setattr(ppo_actor, "PolicyModelActor", ppo_actor.PolicyModelActor)
    swapped = ray_actor.swap_policy_actor()
    assert ppo_actor.PolicyModelActor is swapped
    # What train() does with it (cli/train_ppo_ray.py): build the group from the module attribute.
    group = RayActorGroup(1, 1, ppo_actor.PolicyModelActor, num_gpus_per_actor=1)
    handle = group._actor_handlers[0]

    def inspect(self):
        import os

        return [f"{c.__module__}.{c.__qualname__}" for c in type(self).__mro__], os.getpid()

    mro, pid = ray.get(handle.__ray_call__.remote(inspect))
    ours = mro.index("rlplugins.integrations.openrlhf.ray_actor.RLPluginsPolicyModelActor")
    assert ours < mro.index("openrlhf.trainer.ray.ppo_actor.PolicyModelActor") and pid != os.getpid()

    # The override runs in the worker: without args.rlplugins it refuses before touching GPUs or models.
    args = SimpleNamespace(actor=SimpleNamespace(policy_loss_type="maspo"))
    with pytest.raises(ray.exceptions.RayTaskError, match="got no strategy.args.rlplugins"):
        ray.get(group.async_init_model_from_pretrained(SimpleNamespace(args=args), "unused")[0])
