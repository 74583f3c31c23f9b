# rlplugins — every target creates or reuses its virtual environment from nothing.
# `make test` runs the core tests in .venv, then each framework's tests in its own venv
# (veRL 0.9.1 and OpenRLHF 0.11.2 need incompatible transformers versions).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# CPU build of torch; a bare `torch` requirement pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
PIP_FLAGS := --disable-pip-version-check -q
# pytest, hypothesis and ruff at the versions every venv uses.
DEV_REQUIREMENTS := dev-requirements.txt
# Tests run the Triton kernels in Triton's CPU interpreter; set only for the test targets (target-specific,
# exported to their recipes), so a GPU job launched through make (demo, bench, smoke runs) compiles the real
# kernels. Override with `make test TRITON_INTERPRET=0` on a GPU machine.
TEST_TRITON_INTERPRET ?= 1
# Never put the working directory on sys.path: the repo root holds kernels/, integrations/ and tests/, which
# would shadow other distributions' top-level packages (transformers probes for HF's `kernels` package).
# Exported, so subprocesses and Ray workers inherit it.
export PYTHONSAFEPATH := 1

# Framework makefiles append their test targets to EXTRA_TEST_TARGETS.
EXTRA_TEST_TARGETS :=
-include mk/*.mk

.PHONY: venv test test-core lint demo bench bench-dpo bench-dpo-report clean
.DEFAULT_GOAL := test

$(VENV)/.installed: pyproject.toml $(DEV_REQUIREMENTS)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(VPY) -m pip install $(PIP_FLAGS) $(TORCH_PIN)
	$(VPY) -m pip install $(PIP_FLAGS) -e '.[dev,triton]' -r $(DEV_REQUIREMENTS)
	touch $@

venv: $(VENV)/.installed

test: test-core $(EXTRA_TEST_TARGETS)

# Bugs only (pyflakes, pycodestyle's syntax/statement errors, a few bugbear rules; pyproject.toml [tool.ruff]),
# no formatting: seconds on the whole tree. CI (.ci/run) runs it before `make test`.
lint: venv
	$(VPY) -m ruff check .

test-core: export TRITON_INTERPRET = $(TEST_TRITON_INTERPRET)
test-core: venv
	$(VPY) -m pytest $(wildcard tests/core tests/kernels tests/selection) -q -p no:cacheprovider

demo: venv
	$(VENV)/bin/rlplugins demo $(DEMO_ARGS)

bench: venv
	$(VPY) benchmarks/kernels.py $(BENCH_ARGS)

# SAGE toy benchmark, reproducing the committed results exactly (deterministic, CPU):
# `make bench-dpo`: development run, default configuration, dev seeds 0-15, clean / 10% / 20% flipped labels
#   -> benchmarks/results/toy_sage_default_seeds0.{json,png} (plus the not-chosen noise_guard=2.0 row).
# `make bench-dpo-report`: the frozen report runs, seeds 100-115 on the default and on the other configuration
#   -> benchmarks/results/toy_sage_{default,other}_seeds100.{json,png}.
SAGE_ROWS := --variants "sage:noise_guard=2.0"

bench-dpo: venv
	$(VPY) benchmarks/toy_sage.py $(SAGE_ROWS) $(BENCH_DPO_ARGS)

bench-dpo-report: venv
	$(VPY) benchmarks/toy_sage.py --seed-offset 100 --methods sage dpo_full $(SAGE_ROWS) $(BENCH_DPO_ARGS)
	$(VPY) benchmarks/toy_sage.py --config other --seed-offset 100 --methods sage dpo_full $(SAGE_ROWS) $(BENCH_DPO_ARGS)

clean:
	rm -rf $(VENV) $(VENV)-* .pytest_cache .hypothesis build *.egg-info
