# SAGE toy benchmark (issue 9), reproducing the committed results exactly (deterministic, CPU):
# `make bench-dpo`: development run, default configuration, dev seeds 0-15, clean / 10% / 20% flipped labels
#   -> benchmarks/results/toy_sage_default_seeds0.{json,png} (plus the not-chosen noise_guard=2.0 row).
# `make bench-dpo-report`: the frozen report runs, seeds 100-115 on the default and on the other configuration
#   -> benchmarks/results/toy_sage_{default,other}_seeds100.{json,png}.
.PHONY: bench-dpo bench-dpo-report
SAGE_ROWS := --variants "sage:noise_guard=2.0"

bench-dpo: venv
	$(VPY) benchmarks/toy_sage.py $(SAGE_ROWS) $(BENCH_DPO_ARGS)

bench-dpo-report: venv
	$(VPY) benchmarks/toy_sage.py --seed-offset 100 --methods sage dpo_full $(SAGE_ROWS) $(BENCH_DPO_ARGS)
	$(VPY) benchmarks/toy_sage.py --config other --seed-offset 100 --methods sage dpo_full $(SAGE_ROWS) $(BENCH_DPO_ARGS)
