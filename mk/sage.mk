# SAGE toy DPO benchmark (issue 4): `make bench-dpo` reproduces benchmarks/results/toy_dpo.{json,png}.
.PHONY: bench-dpo

bench-dpo: venv
	$(VPY) benchmarks/toy_dpo.py $(BENCH_DPO_ARGS)
