# veRL 0.9.1 environment and tests.
# veRL needs transformers<5.11 while OpenRLHF 0.11.2 pins 5.15, so veRL gets its own venv.
# Included by the top-level Makefile before its `test` rule; uses PYTHON, TORCH_PIN, PIP_FLAGS, DEV_REQUIREMENTS.
VERL_VENV := .venv-verl
VERL_PY := $(VERL_VENV)/bin/python
VERL_PIN := verl[verl-core]==0.9.1

EXTRA_TEST_TARGETS += test-verl
.PHONY: venv-verl test-verl test-verl-dp verl-smoke

# Order matters: torch first (the CPU build; veRL's base requirements pin no torch, and its
# vllm/sglang/fsdp/megatron/cpu extras pin torch 2.11, so none of them is requested), then veRL,
# then rlplugins itself with --no-deps so that nothing can replace torch. The dev extras are
# installed by name for the same reason. The last line fails the build if torch was replaced.
$(VERL_VENV)/.installed: pyproject.toml mk/verl.mk $(DEV_REQUIREMENTS)
	test -x $(VERL_PY) || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(VERL_PY) -m pip install $(PIP_FLAGS) $(TORCH_PIN)
	$(VERL_PY) -m pip install $(PIP_FLAGS) '$(VERL_PIN)' '$(TORCH_PIN)'
	$(VERL_PY) -m pip install $(PIP_FLAGS) -r $(DEV_REQUIREMENTS)
	$(VERL_PY) -m pip install $(PIP_FLAGS) --no-deps -e .
	$(VERL_PY) -c "import torch, verl; t = torch.__version__; assert t.startswith('$(subst torch==,,$(TORCH_PIN))') and t.endswith('+cpu'), f'torch was replaced: {t}'; assert verl.__version__ == '0.9.1', verl.__version__"
	touch $@

venv-verl: $(VERL_VENV)/.installed

test-verl: export TRITON_INTERPRET = $(TEST_TRITON_INTERPRET)
test-verl: venv-verl
	$(VERL_PY) -m pytest tests/verl -m "not slow" -q -p no:cacheprovider

# Data parallelism, full matrix (about 2.5 min on 2 cores, so not in `make test`, which runs two cases and a
# negative control): for maspo and rlp_ppo_clip x the five aggregation modes, one update_actor of veRL's real
# worker on 2 ranks (torchrun, gloo, FSDP2) must give the parameters and metrics of the same update on 1 rank.
test-verl-dp: venv-verl
	RLPLUGINS_VERL_SLOW=1 $(VERL_PY) -m pytest tests/verl/test_data_parallel.py -m slow -q -p no:cacheprovider

# Two real update steps of veRL's actor worker on CPU under the flags in VERL_SMOKE_ARGS.
verl-smoke: venv-verl
	$(VERL_VENV)/bin/rlplugins verl-smoke $(VERL_SMOKE_ARGS)
