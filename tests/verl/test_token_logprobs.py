"""The opt-in routing of veRL's log-prob/entropy functions through rlplugins.kernels.token_logprobs.

CPU only here: the kernel path is exercised with ``rlplugins.losses.chunked_token_logprobs`` standing in for
the Triton kernel (same arguments, same results; triton is not installed in .venv-verl) and routed for CPU
tensors. The real kernel on CUDA is checked by the ``cuda``-marked test, skipped without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

pytest.importorskip("verl", reason="the veRL adapter tests run in .venv-verl (make test-verl)")

import verl.utils.torch_functional as verl_F  # noqa: E402
import verl.workers.engine.fsdp.transformer_impl as fsdp_engine  # noqa: E402

from rlplugins.integrations.verl import token_logprobs as tlp  # noqa: E402
from rlplugins.losses import chunked_token_logprobs  # noqa: E402

NAMES = tlp.ROUTED_NAMES
ENGINE_BINDINGS = {
    "verl.utils.torch_functional.logprobs_from_logits",
    "verl.utils.torch_functional.entropy_from_logits",
    "verl.utils.torch_functional.entropy_from_logits_with_chunking",
    "verl.workers.engine.fsdp.transformer_impl.logprobs_from_logits",
}


@pytest.fixture(autouse=True)
def _restore():
    """Every test starts and ends with veRL's own functions (the switch is off in this test process)."""
    tlp.uninstall()
    assert not tlp.is_installed()
    yield
    tlp.uninstall()


@pytest.fixture(scope="module")
def originals() -> dict:
    tlp.uninstall()
    found = {name: getattr(verl_F, name) for name in NAMES}
    for fn in found.values():
        assert fn.__module__ == "verl.utils.torch_functional"  # veRL's, not ours
    return found


class Spy:
    """Stand-in for the Triton kernel (the chunked torch twin), recording how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, logits, labels, temperature=1.0, return_entropy=False, inplace_backward=False):
        self.calls.append((tuple(logits.shape), temperature, return_entropy, inplace_backward))
        return chunked_token_logprobs(logits, labels, temperature, return_entropy, inplace_backward)


@pytest.fixture
def standin() -> Spy:
    spy = Spy()
    tlp.install(impl=spy, device_types=("cpu",))
    return spy


def _inputs(shape, vocab, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(*shape, vocab, generator=gen)).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=gen)
    weights = torch.randn(*shape, generator=gen)
    return logits, labels, weights


def _value_and_grad(fn, logits, weights, *args, **kwargs):
    z = logits.clone().requires_grad_(True)
    out = fn(z, *args, **kwargs)
    (out.float() * weights).sum().backward()
    return out.detach(), z.grad


# --------------------------------------------------------------------------- install / uninstall


def test_install_is_idempotent_reversible_and_covers_the_engine(originals):
    first = tlp.install()
    assert ENGINE_BINDINGS <= set(first)
    assert tlp.is_installed()
    assert tlp.install() == []  # nothing left to replace
    assert fsdp_engine.logprobs_from_logits is tlp.logprobs_from_logits
    assert fsdp_engine.verl_F is verl_F
    for name in NAMES:
        assert getattr(verl_F, name) is tlp.ROUTERS[name]
    # No loaded verl.* module keeps a binding to one of veRL's originals.
    for modname, module in list(sys.modules.items()):
        if module is not None and (modname == "verl" or modname.startswith("verl.")):
            for name in NAMES:
                assert vars(module).get(name) is not originals[name], f"{modname}.{name} not routed"

    restored = tlp.uninstall()
    assert set(restored) == set(first)
    assert not tlp.is_installed()
    assert fsdp_engine.logprobs_from_logits is originals["logprobs_from_logits"]
    for name in NAMES:
        assert getattr(verl_F, name) is originals[name]
    assert tlp.uninstall() == []


def test_every_name_the_engine_calls_is_routed():
    """The FSDP engine reaches these functions as the module global ``logprobs_from_logits`` and as
    ``verl_F.entropy_from_logits[_with_chunking]`` (read in __init__ and prepare_model_outputs): after install
    each of those lookups yields our router. Fails if veRL starts calling another binding."""
    tlp.install()
    used = set(fsdp_engine.FSDPEngineWithLMHead.prepare_model_outputs.__code__.co_names)
    used |= set(fsdp_engine.FSDPEngine.__init__.__code__.co_names)
    assert {"logprobs_from_logits", "entropy_from_logits", "entropy_from_logits_with_chunking"} <= used
    assert vars(fsdp_engine)["logprobs_from_logits"] is tlp.logprobs_from_logits
    assert "entropy_from_logits" not in vars(fsdp_engine)  # attribute lookups on verl_F, not copies
    assert verl_F.entropy_from_logits is tlp.entropy_from_logits
    assert verl_F.entropy_from_logits_with_chunking is tlp.entropy_from_logits_with_chunking


def test_switch_is_off_by_default_and_on_with_the_env_var(run_python):
    """Fresh interpreters: ``import verl`` runs our entry point; the env var alone decides. A module imported
    after the install copies the routed function."""
    code = (
        "import json, sys, verl\n"
        "import verl.utils.torch_functional as F\n"
        "from rlplugins.integrations.verl import token_logprobs as t\n"
        "late_before = [m for m in ('verl.workers.engine.fsdp.transformer_impl',\n"
        "  'verl.workers.rollout.naive.naive_rollout') if m in sys.modules]\n"
        "import verl.workers.engine.fsdp.transformer_impl as eng\n"
        "import verl.workers.rollout.naive.naive_rollout as late\n"
        "print(json.dumps({'installed': t.is_installed(), 'F': F.logprobs_from_logits.__module__,\n"
        "  'engine': eng.logprobs_from_logits.__module__,\n"
        "  'late_before': late_before, 'late': late.logprobs_from_logits.__module__}))\n"
    )
    ours = "rlplugins.integrations.verl.token_logprobs"
    # late_before == []: the install, which runs inside ``import verl``, must not import the engine (that would
    # create veRL's device platform before e.g. rlplugins verl-smoke registers its CPU platform).
    env_off = {tlp.ENV_VAR: "0", "VERL_USE_EXTERNAL_PLUGINS": "auto"}
    env_on = {tlp.ENV_VAR: "1", "VERL_USE_EXTERNAL_PLUGINS": "auto"}
    off, on = run_python(code, env=env_off), run_python(code, env=env_on)
    assert off.returncode == 0, off.stderr[-3000:]
    assert on.returncode == 0, on.stderr[-3000:]
    off_r, on_r = json.loads(off.stdout.strip().splitlines()[-1]), json.loads(on.stdout.strip().splitlines()[-1])
    assert off_r["installed"] is False and off_r["F"] == "verl.utils.torch_functional"
    assert off_r["late"] == off_r["engine"] == "verl.utils.torch_functional"
    assert on_r == {"installed": True, "F": ours, "engine": ours, "late_before": [], "late": ours}
    assert "routing veRL logprobs_from_logits" in on.stderr
    assert "routing veRL" not in off.stderr


# --------------------------------------------------------------------------- CPU: veRL's results, bit for bit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13,), (2, 5)])
def test_cpu_tensors_get_verls_results_bit_for_bit(originals, dtype, shape):
    tlp.install()  # default: kernel for CUDA tensors only
    logits, labels, weights = _inputs(shape, 37, dtype)
    for inplace in (True, False):
        got = _value_and_grad(verl_F.logprobs_from_logits, logits, weights, labels, inplace_backward=inplace)
        want = _value_and_grad(originals["logprobs_from_logits"], logits, weights, labels, inplace_backward=inplace)
        assert got[0].dtype == want[0].dtype
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    got = _value_and_grad(verl_F.entropy_from_logits, logits, weights)
    want = _value_and_grad(originals["entropy_from_logits"], logits, weights)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if len(shape) == 1:
        got = _value_and_grad(verl_F.entropy_from_logits_with_chunking, logits, weights, chunk_size=4)
        want = _value_and_grad(originals["entropy_from_logits_with_chunking"], logits, weights, chunk_size=4)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# --------------------------------------------------------------------------- routed path (stand-in for the kernel)


@pytest.mark.parametrize("shape", [(29,), (3, 7)])
def test_routed_logprobs_match_verl(originals, standin, shape):
    logits, labels, weights = _inputs(shape, 50)
    got = _value_and_grad(fsdp_engine.logprobs_from_logits, logits, weights, labels=labels, inplace_backward=False)
    want = _value_and_grad(originals["logprobs_from_logits"], logits, weights, labels, inplace_backward=False)
    assert standin.calls == [(tuple(logits.shape), 1.0, False, False)]
    assert got[0].dtype == torch.float32 and got[0].shape == labels.shape
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(29,), (3, 7)])
def test_routed_entropy_matches_verl(originals, standin, shape):
    logits, _, weights = _inputs(shape, 50, seed=1)
    got = _value_and_grad(verl_F.entropy_from_logits, logits, weights)
    want = _value_and_grad(originals["entropy_from_logits"], logits, weights)
    assert standin.calls == [(tuple(logits.shape), 1.0, True, False)]
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    if len(shape) == 1:
        got = _value_and_grad(verl_F.entropy_from_logits_with_chunking, logits, weights, chunk_size=8)
        want = _value_and_grad(originals["entropy_from_logits_with_chunking"], logits, weights, chunk_size=8)
        assert len(standin.calls) == 2 and got[0].dtype == want[0].dtype == torch.float32
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_temperature_is_applied_once_by_verl(originals, standin):
    """veRL divides the logits by the per-token temperature (_scale_logits_by_temperature) and then calls
    these functions: the router passes temperature=1.0, and gradients reach the raw logits through veRL's
    division exactly as with veRL's own functions."""
    logits, labels, weights = _inputs((23,), 40, seed=2)
    temperature = torch.linspace(0.5, 1.7, 23).unsqueeze(-1)

    def pipeline(fns):
        z = logits.clone().requires_grad_(True)
        x = fsdp_engine._scale_logits_by_temperature(z, temperature, is_unit_temperature=False)
        ent = fns["entropy_from_logits"](x)
        lp = fns["logprobs_from_logits"](x, labels, inplace_backward=False)
        ((lp * weights).sum() - 0.3 * (ent * weights).sum()).backward()
        return lp.detach(), ent.detach(), z.grad

    got = pipeline(tlp.ROUTERS)
    want = pipeline(originals)
    assert [c[1] for c in standin.calls] == [1.0, 1.0]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    ref = torch.log_softmax(logits / temperature, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got[0], ref, rtol=1e-5, atol=1e-5)


def test_inplace_backward_only_where_verl_would_write_in_place(standin, monkeypatch):
    logits, labels, _ = _inputs((5,), 11)
    verl_F.logprobs_from_logits(logits, labels)  # veRL's default inplace_backward=True, flash-attn CE absent
    monkeypatch.setattr(verl_F, "FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE", True)
    verl_F.logprobs_from_logits(logits, labels)
    verl_F.logprobs_from_logits(logits, labels, inplace_backward=False)
    monkeypatch.setenv("VERL_DISABLE_FLASH_ATTN_CE", "1")
    verl_F.logprobs_from_logits(logits, labels)
    assert [c[3] for c in standin.calls] == [False, True, False, False]


def test_inputs_the_kernel_does_not_take_fall_back(originals, standin):
    cases = [
        (torch.randn(2, 3, 4, 9), torch.randint(0, 9, (2, 3, 4))),  # 4-D
        (torch.randn(6, 9, dtype=torch.float64), torch.randint(0, 9, (6,))),  # float64
        (torch.randn(6, 9).t(), torch.randint(0, 6, (9,))),  # strided, still routed (non-unit vocab stride)
    ]
    for i, (logits, labels) in enumerate(cases):
        got = verl_F.logprobs_from_logits(logits, labels, inplace_backward=False)
        want = originals["logprobs_from_logits"](logits, labels, inplace_backward=False)
        if i < 2:
            assert torch.equal(got, want), i
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(standin.calls) == 1  # only the last case reached the stand-in
    # int16 labels: veRL's own function rejects them (gather), and so does the routed one, via veRL's.
    with pytest.raises(RuntimeError, match="gather"):
        verl_F.logprobs_from_logits(torch.randn(6, 9), torch.randint(0, 9, (6,), dtype=torch.int16))
    # entropy_from_logits_with_chunking is 2-D only in veRL; a 3-D input keeps veRL's behaviour (it raises).
    with pytest.raises(RuntimeError):
        verl_F.entropy_from_logits_with_chunking(torch.randn(2, 3, 9), chunk_size=4)
    assert len(standin.calls) == 1


# --------------------------------------------------------------------------- the real kernel (GPU only)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_routes_through_the_triton_kernel(originals, dtype, monkeypatch):
    import rlplugins.kernels as kernels

    calls = []
    real = kernels.token_logprobs

    def counting(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("return_entropy", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "token_logprobs", counting)
    tlp.install()
    logits, labels, weights = _inputs((4, 33), 1000, dtype, seed=3)
    logits, labels, weights = logits.cuda(), labels.cuda(), weights.cuda()
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}

    def reference_logprobs(z, labels):
        return torch.log_softmax(z.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    got = _value_and_grad(fsdp_engine.logprobs_from_logits, logits, weights, labels=labels, inplace_backward=False)
    want = _value_and_grad(reference_logprobs, logits, weights, labels)
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1].float(), want[1].float(), **tol)
    got = _value_and_grad(verl_F.entropy_from_logits, logits, weights)
    want = _value_and_grad(lambda z: originals["entropy_from_logits"](z.float()), logits, weights)
    assert got[0].dtype == dtype
    torch.testing.assert_close(got[0].float(), want[0], **tol)
    torch.testing.assert_close(got[1].float(), want[1].float(), **tol)
    assert calls == [False, True]
