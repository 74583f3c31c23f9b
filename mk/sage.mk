# SAGE toy benchmark (issue 9). `make bench-dpo`: the development run (default configuration, dev seeds 0-15,
# clean / 10% / 20% flipped labels) -> benchmarks/results/toy_sage_default_seeds0.{json,png}.
# `make bench-dpo-report`: the frozen report runs (seeds 100-115 on the default and on the other configuration).
.PHONY: bench-dpo bench-dpo-report

bench-dpo: venv
	$(VPY) benchmarks/toy_sage.py $(BENCH_DPO_ARGS)

bench-dpo-report: venv
	$(VPY) benchmarks/toy_sage.py --seed-offset 100 $(BENCH_DPO_ARGS)
	$(VPY) benchmarks/toy_sage.py --seed-offset 100 --config other $(BENCH_DPO_ARGS)
