"""Benchmark of gated token losses from logits: time, peak memory, effective bandwidth, accuracy.

    .venv/bin/python benchmarks/kernels.py                 # GPU if present, else the CPU mode
    make bench BENCH_ARGS="--tokens 4096 --vocab 151936"   # any subset (compiled Triton even with
                                                           # TRITON_INTERPRET=1 in the environment: the script resets it)
    nice .venv/bin/python benchmarks/kernels.py --device cpu --tokens 1024 4096 --rounds 3

Providers (one loss = per-token gate + token-mean / seq-mean-token-mean aggregation, forward and backward
down to the logits, bfloat16 logits):

    torch-eager            log_softmax(z.float() / T) + gather + the core's per-token loss (TRL/veRL style; "naive")
    torch-compile          the same function through torch.compile(dynamic=False)
    torch-chunked          policy_loss_from_logits(backend="torch"): rlplugins' chunked torch path + the core's loss
    torch-chunked-inplace  the same, gradient written into the logits buffer
    ours-composed          rlplugins.kernels.token_logprobs (Triton) + the core's torch loss on [N]   (approach A)
    ours-fused             rlplugins.kernels.fused_policy_loss (gate in the kernel epilogue)          (approach B)
    ours-fused-inplace     the same with inplace_backward=True
    liger                  Liger-Kernel's triton_grpo_loss (in-place, its default) for the loss types it has:
                           sapo -> loss_type "sapo", ppo_clip -> "dapo" (clip eps 0.2 / 0.2); needs liger-kernel

Modes (code in ``benchmarks/kernelbench/``): ``cuda`` (GPU; CUDA events in one process, bandwidth against the HBM
peak), ``cpu`` (no GPU; every provider timed and measured in fresh child processes over interleaved rounds, peak
memory as the growth of the resident set; see ``kernelbench/cpu.py``) and ``--tune`` (GPU; launch-config sweep of the
fused kernel). The gradient is handed to a sink (as to lm_head's backward in a model), so no provider pays for a
copy into ``.grad``.

Outputs: a table on stdout, ``benchmarks/results/kernels_<device>.json``, ``.png`` and ``.md`` (the CPU mode's stem
is ``kernels_cpu``; the JSON names the CPU model).
"""

from __future__ import annotations

import os
import sys

import argparse
import importlib.util
import json

HERE = os.path.dirname(os.path.abspath(__file__))


def load_kernelbench():
    """Import ``benchmarks/kernelbench`` by path: the Makefile sets PYTHONSAFEPATH=1, and putting ``benchmarks/`` on
    sys.path would make this very file importable as a top-level ``kernels`` (a name transformers probes for)."""
    if "kernelbench" in sys.modules:
        return sys.modules["kernelbench"]
    path = os.path.join(HERE, "kernelbench")
    spec = importlib.util.spec_from_file_location("kernelbench", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernelbench"] = module
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--tokens", type=int, nargs="+", help="token counts (GPU default 4096 16384; CPU 1024 4096)")
    parser.add_argument("--vocab", type=int, nargs="+", help="vocab sizes (GPU default 32000 128256 151936; CPU 151936)")
    parser.add_argument("--losses", nargs="+", help="GPU default maspo sapo ppo_clip; CPU default maspo")
    parser.add_argument("--providers", nargs="+", help="subset of the providers (see the module docstring)")
    parser.add_argument("--reps", type=int, help="timed repetitions (GPU default 20; CPU 2 per child process)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed repetitions first (GPU default 3; CPU 1, at least 1 for torch-compile)")
    parser.add_argument("--rounds", type=int, help="CPU mode: interleaved rounds of one child per provider (default 3)")
    parser.add_argument("--no-memory", action="store_true", help="CPU mode: skip the peak-memory children")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--hbm-peak-tbs", type=float, help="override the HBM peak (TB/s) used for %% of peak")
    parser.add_argument("--tune", action="store_true", help="GPU: sweep the fused kernel's block/warps instead")
    parser.add_argument("--threads", type=int, help="CPU mode: torch threads (default 1: on a shared machine "
                        "OpenMP threads that wait for busy cores make every op ~100x slower)")
    parser.add_argument("--tag", help="output file suffix (default: cpu, or the GPU's name)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--interpret", action="store_true",
                        help="keep TRITON_INTERPRET=1: run the Triton providers in the CPU interpreter (a smoke test)")
    parser.add_argument("--replot", metavar="JSON", help="redraw the PNG of an existing result file and exit")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kb = load_kernelbench()
    from kernelbench import harness

    if args._child:  # one CPU measurement in this fresh process (kernelbench/cpu.py)
        from kernelbench import cpu

        try:
            out = cpu.child(json.loads(args._child))
        except Exception as exc:  # noqa: BLE001 - reported to the parent as this provider's error
            out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
        print(json.dumps(out))
        return 0
    if args.replot:
        with open(args.replot) as f:
            harness.plot(json.load(f), os.path.splitext(args.replot)[0] + ".png")
        return 0

    import torch

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if args.tune:
        if not cuda:
            print("--tune needs a GPU", file=sys.stderr)
            return 2
        from kernelbench import tune

        rows = tune.tune((args.tokens or [16384])[0], (args.vocab or [151936])[-1], args.reps or 10)
        name = torch.cuda.get_device_name(0)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"kernels_tune_{harness.slug(args.tag or name)}.json"), "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=1)
        return 0
    if cuda:
        from kernelbench import cuda as mode

        payload, md = mode.run(args)
        stem = f"kernels_{harness.slug(args.tag or payload['device'])}"
    else:
        from kernelbench import cpu as mode

        payload, md = mode.run(args, os.path.abspath(__file__))
        stem = f"kernels_{harness.slug(args.tag or 'cpu')}"
    del kb
    harness.write_results(payload, args.out, stem, md)
    return 0


if __name__ == "__main__":
    # The test targets run with TRITON_INTERPRET=1 (and a shell may have it exported); timing the interpreter on a
    # GPU would be meaningless. Compiled kernels unless --interpret (a CPU smoke test of this script) is asked for;
    # set before Triton loads (nothing above imports it), and only when run as a script, not when imported. A
    # CPU-mode child (--_child) keeps what its parent set.
    if "--interpret" not in sys.argv and "--_child" not in sys.argv:
        os.environ["TRITON_INTERPRET"] = "0"
    sys.exit(main())
