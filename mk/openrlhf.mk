# OpenRLHF 0.11.2 adapter: its own venv (OpenRLHF pins transformers 5.15.0, veRL 0.9.1 needs < 5.11).
# CPU-only recipe: CPU torch first, then everything else constrained to that exact torch so that
# nothing can pull a CUDA build; openrlhf itself with --no-deps (its pins pull CUDA flash-attn and a
# deepspeed sdist); deepspeed built from its sdist without ops and without build isolation (an
# isolated build would fetch a CUDA torch). flash_attn and vLLM cannot exist on CPU: the tests stub them.
OPENRLHF_VENV := .venv-openrlhf
OPENRLHF_PY := $(OPENRLHF_VENV)/bin/python
OPENRLHF_PIN := openrlhf==0.11.2
OPENRLHF_DEPS := transformers==5.15.0 peft ray==2.55.0 pylatexenc datasets torchdata aiohttp pillow
OPENRLHF_DS_PIN := deepspeed==0.19.6
OPENRLHF_PYTEST_ARGS ?= -q -p no:cacheprovider

.PHONY: venv-openrlhf test-openrlhf test-openrlhf-slow test-openrlhf-dp

$(OPENRLHF_VENV)/.installed: pyproject.toml mk/openrlhf.mk $(DEV_REQUIREMENTS)
	test -x $(OPENRLHF_PY) || $(PYTHON) -m venv $(OPENRLHF_VENV)
	$(OPENRLHF_PY) -m pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	echo '$(TORCH_PIN)' > $(OPENRLHF_VENV)/torch-constraint.txt
	$(OPENRLHF_PY) -m pip install $(PIP_FLAGS) $(TORCH_PIN)
	$(OPENRLHF_PY) -m pip install $(PIP_FLAGS) --no-deps $(OPENRLHF_PIN)
	$(OPENRLHF_PY) -m pip install $(PIP_FLAGS) -c $(OPENRLHF_VENV)/torch-constraint.txt $(OPENRLHF_DEPS) \
		-r $(DEV_REQUIREMENTS)
	DS_BUILD_OPS=0 DS_ACCELERATOR=cpu $(OPENRLHF_PY) -m pip install $(PIP_FLAGS) --no-build-isolation \
		-c $(OPENRLHF_VENV)/torch-constraint.txt $(OPENRLHF_DS_PIN)
	$(OPENRLHF_PY) -m pip install $(PIP_FLAGS) --no-deps -e .
	$(OPENRLHF_PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v == '$(subst torch==,,$(TORCH_PIN))+cpu' else 'torch ' + v + ' is not the CPU build $(TORCH_PIN)+cpu')"
	touch $@

venv-openrlhf: $(OPENRLHF_VENV)/.installed

test-openrlhf: export TRITON_INTERPRET = $(TEST_TRITON_INTERPRET)
test-openrlhf: venv-openrlhf
	$(OPENRLHF_PY) -m pytest tests/openrlhf -m "not slow" $(OPENRLHF_PYTEST_ARGS)

# The T2 tier (minutes, not in `make test`): our DPO wrapper through OpenRLHF's real train_dpo main under real
# DeepSpeed ZeRO-2 on CPU; the first run JIT-compiles DeepSpeed's CPU ops into TORCH_EXTENSIONS_DIR.
test-openrlhf-slow: export TRITON_INTERPRET = $(TEST_TRITON_INTERPRET)
test-openrlhf-slow: venv-openrlhf
	RLPLUGINS_OPENRLHF_SLOW=1 $(OPENRLHF_PY) -m pytest tests/openrlhf -m slow $(OPENRLHF_PYTEST_ARGS)

# Data parallelism (minutes, not in `make test`): the SAGE DPO wrapper on 2 DeepSpeed ZeRO-2 ranks (gloo): disjoint
# shards covering the set, and a preempted run resumed from its checkpoint continues exactly on each rank. The
# first run JIT-compiles DeepSpeed's CPU Adam. (CorePolicyLoss's 2-rank gradient check is in `make test-openrlhf`.)
test-openrlhf-dp: venv-openrlhf
	RLPLUGINS_OPENRLHF_SLOW=1 $(OPENRLHF_PY) -m pytest tests/openrlhf/test_t2_train_dpo_cli.py -m slow -k two_ranks \
		$(OPENRLHF_PYTEST_ARGS)

EXTRA_TEST_TARGETS += test-openrlhf
