"""The SAGE toy benchmark runs end to end on a tiny configuration and writes a consistent JSON (no timing asserted)."""

import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "toy_sage.py"


@pytest.fixture(scope="module")
def toy(load_file):
    return load_file("rlplugins_toy_sage", BENCH)


def test_quick_run_writes_consistent_results(toy, tmp_path):
    out = tmp_path / "toy"
    res = toy.main(["--quick", "--no-plot", "--workers", "1", "--noise", "0.2", "--out", str(out),
                    "--methods", "sage", "dpo_full"])
    saved = json.loads((tmp_path / "toy.json").read_text())
    row = saved["rows"]["20%"]
    assert row["summary"].keys() == {"sage", "dpo_full"}
    cfg = res["config"]
    for name, runs in res["rows"]["20%"]["runs"].items():
        assert len(runs) == cfg["seeds"]
        for r in runs:
            last = r["curve"][-1]
            # equal backward budgets; compute = 3 x backward pairs + scoring forwards
            assert last["backward_pairs"] == cfg["steps"] * cfg["batch_size"]
            assert last["compute"] == 3 * last["backward_pairs"] + r["scored_pairs"]
            assert 0.0 <= r["noisy_share"] <= 1.0 and 0.0 <= last["solve_rate"] <= 1.0
    # the pairs share most digits, noise is applied, and dpo_full is its own reference in the paired statistics
    for w in row["world"]:
        assert 0.0 < w["noise_share"] < 0.5 and w["mean_shared_digits"] > 0.0
    assert row["summary"]["dpo_full"]["diff_vs_dpo_full"]["mean"] == 0.0
    assert "| sage |" in saved["tables_markdown"]
