# Two commands do all set-up on a fresh machine:
#   make demo   – creates .venv, installs requirements.txt, trains the demo model on the built-in digits set
#   make test   – creates .venv, installs requirements + test extras, runs the whole suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test env test-env summary benchmark clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

$(VENV)/.runtime: requirements.txt | $(VENV)/.created
	$(PIP) install -q -r requirements.txt
	touch $@

# torch is pinned to the CPU build and installed in the same command as timm, so pip never pulls a CUDA torch.
$(VENV)/.test: requirements.txt requirements-test.txt $(VENV)/.runtime
	$(PIP) install -q -r requirements.txt -r requirements-test.txt
	touch $@

env: $(VENV)/.runtime
test-env: $(VENV)/.test

demo: $(VENV)/.runtime
	rm -rf workdirs/demo
	$(PY) -m effnet.main --config=configs/demo.py --workdir=workdirs/demo

test: $(VENV)/.test
	$(PY) -m pytest -q -ra tests

summary: $(VENV)/.runtime
	$(PY) -m effnet.tools.summary --config=configs/efficientnetv2.py:s

clean:
	rm -rf workdirs .pytest_cache
