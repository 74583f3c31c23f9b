# TRL 1.16.0 adapter. TRL 1.16.0 needs Python >= 3.11, transformers >= 4.56.2, accelerate >= 1.10.1 and
# datasets >= 4.7.0: the OpenRLHF venv already holds all of them (transformers 5.15.0) while veRL's caps transformers
# below 5.11, so TRL goes into the OpenRLHF venv instead of a third one (a few seconds instead of a full torch +
# transformers install). Its other requirements are already there too; the torch constraint keeps the CPU build, and
# the check below fails the build if installing TRL replaced torch or moved transformers under OpenRLHF.
TRL_VENV = $(OPENRLHF_VENV)
TRL_PY = $(TRL_VENV)/bin/python
TRL_PIN := trl==1.16.0
# The transformers version OpenRLHF's recipe pins (installing TRL must not move it).
TRL_TRANSFORMERS = $(patsubst transformers==%,%,$(filter transformers==%,$(OPENRLHF_DEPS)))
TRL_PYTEST_ARGS ?= -q -p no:cacheprovider

EXTRA_TEST_TARGETS += test-trl
.PHONY: venv-trl test-trl test-trl-slow trl-smoke

$(TRL_VENV)/.trl-installed: $(OPENRLHF_VENV)/.installed mk/trl.mk
	$(TRL_PY) -m pip install $(PIP_FLAGS) -c $(TRL_VENV)/torch-constraint.txt '$(TRL_PIN)'
	$(TRL_PY) -c "import torch, transformers, trl; t = torch.__version__; assert t == '$(subst torch==,,$(TORCH_PIN))+cpu', f'torch was replaced: {t}'; assert transformers.__version__ == '$(TRL_TRANSFORMERS)', transformers.__version__; assert trl.__version__ == '$(subst trl==,,$(TRL_PIN))', trl.__version__"
	touch $@

venv-trl: $(TRL_VENV)/.trl-installed

test-trl: venv-trl
	$(TRL_PY) -m pytest tests/trl -m "not slow" $(TRL_PYTEST_ARGS)

# Not in `make test` (about a minute): SageDPOTrainer under real 2-process DDP on CPU (torchrun, gloo).
test-trl-slow: venv-trl
	$(TRL_PY) -m pytest tests/trl -m slow $(TRL_PYTEST_ARGS)

# A few real GRPO steps (an rlplugins loss, num_iterations=2) and SAGE DPO steps through TRL's trainers on CPU.
trl-smoke: venv-trl
	$(TRL_PY) -m rlplugins.cli trl-smoke $(TRL_SMOKE_ARGS)
