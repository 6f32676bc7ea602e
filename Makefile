# Two commands do all set-up on a fresh machine:
#   make demo   – creates .venv (Python 3.12), installs requirements.txt and the project, trains the demo model
#   make test   – creates .venv, installs requirements + test extras and the project, runs the whole suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export TF_CPP_MIN_LOG_LEVEL := 2

# Python 3.12 (`make PYTHON=/path/to/python3.12 ...` to choose): `python3.12` when it runs, else `python3` when it
# is 3.12, else pyenv's newest 3.12 (pyenv's python3.12 shim answers only when PYENV_VERSION names a 3.12).
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell \
  if python3.12 -c '' >/dev/null 2>&1; then command -v python3.12; \
  elif python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; then command -v python3; \
  elif command -v pyenv >/dev/null 2>&1; then \
    for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$$' | sort -t. -k3,3nr); do \
      p=$$(PYENV_VERSION=$$v pyenv which python3.12 2>/dev/null) && "$$p" -c '' >/dev/null 2>&1 && { echo "$$p"; break; }; \
    done; \
  fi)
endif

.PHONY: demo test env test-env summary benchmark clean

# The stamp names the Python, so a venv made by an older Makefile (Python 3.11) is not silently reused.
$(VENV)/.created-py312:
	@if [ -z "$(PYTHON)" ] || ! "$(PYTHON)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then \
	  echo "error: no working Python 3.12 found (tried python3.12, python3, pyenv's 3.12.x; PYTHON='$(PYTHON)')." >&2; \
	  echo "       Install Python 3.12 (python.org, your package manager, pyenv install 3.12) or run" >&2; \
	  echo "       make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)" >&2; exit 1; fi
	@if [ -x "$(PY)" ] && ! "$(PY)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then \
	  echo "error: $(VENV) is a $$($(PY) -V 2>&1) venv; the project now needs Python 3.12." >&2; \
	  echo "       Remove it (rm -rf $(VENV)) or use another one: make VENV=.venv312 $(MAKECMDGOALS)" >&2; exit 1; fi
	"$(PYTHON)" -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

# The pinned set and the project itself (editable: the console scripts, and `import effnet` from any directory).
$(VENV)/.runtime: requirements.txt requirements-onnx.txt pyproject.toml | $(VENV)/.created-py312
	$(PIP) install -q -r requirements.txt -e .
	$(PIP) install -q --no-deps -r requirements-onnx.txt
	touch $@

# Test extras: resolved with the runtime pins, then torch/timm without their CUDA extras (requirements-torch.txt says
# why); `pip check` must find nothing missing but the one package left out on purpose (triton) and jax2onnx's
# declared dependencies (requirements-onnx.txt says why).
$(VENV)/.test: requirements-test.txt requirements-torch.txt $(VENV)/.runtime
	$(PIP) install -q -r requirements.txt -r requirements-test.txt -e .
	$(PIP) install -q --no-deps -r requirements-torch.txt
	@broken=$$($(PIP) check 2>&1 | grep -v -E '^No broken requirements|^torch [^ ]+ requires triton|^jax2onnx [^ ]+ (requires|has requirement)'); \
	  if [ -n "$$broken" ]; then echo "$$broken" >&2; exit 1; fi
	$(PY) -c 'import torch, timm'
	touch $@

env: $(VENV)/.runtime
test-env: $(VENV)/.test

demo: $(VENV)/.runtime
	rm -rf workdirs/demo
	$(PY) -m effnet.main --config=configs/demo.py --workdir=workdirs/demo

# Two test processes, whole files each (module fixtures run once): XLA already uses every core inside a process, so
# the second worker mostly fills what the first leaves idle (imports, tracing, child processes starting). Measured on
# 2 cores (371 tests): 12 min 42 s in one process, 8 min 33 s in two.
test: $(VENV)/.test
	$(PY) -m pytest -q -ra -n 2 --dist loadfile tests

summary: $(VENV)/.runtime
	$(PY) -m effnet.tools.summary --config=configs/efficientnetv2.py:s

clean:
	rm -rf workdirs .pytest_cache build
