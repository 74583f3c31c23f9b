"""The toy DPO benchmark runs end to end on a tiny configuration and writes a consistent JSON (no timing asserted)."""

import importlib.util
import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "toy_dpo.py"


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("rlplugins_toy_dpo", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rlplugins_toy_dpo"] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("rlplugins_toy_dpo", None)


def test_quick_run_writes_consistent_results(toy, tmp_path):
    out = tmp_path / "toy"
    res = toy.main(["--quick", "--no-plot", "--out", str(out), "--methods", "sage", "dpo_full", "dynamic_loss"])
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved["summary"]["methods"].keys() == {"sage", "dpo_full", "dynamic_loss"}
    cfg = res["config"]
    for name, runs in res["runs"].items():
        assert len(runs) == cfg["seeds"]
        for r in runs:
            last = r["curve"][-1]
            # equal backward budgets; compute = 3 x backward pairs + scoring forwards
            assert last["backward_pairs"] == cfg["steps"] * cfg["batch_size"]
            assert last["compute"] == 3 * last["backward_pairs"] + r["scored_pairs"]
            assert 0.0 <= r["noisy_share"] <= 1.0
            assert 0.0 <= last["gt_acc"] <= 1.0
        if name == "dpo_full":
            assert all(r["scored_pairs"] == 0 for r in runs)
    assert all(r["scored_pairs"] > 0 for r in res["runs"]["sage"])
    assert "| sage |" in saved["table_markdown"]
