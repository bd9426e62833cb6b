# polydiff: the two set-up commands of the README are `make bench` and `make test`.
# Both build the virtual environment .venv on first use (Python >= 3.10, pip, PyPI access).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: bench bench-full test clean

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "python3 is required (Debian: apt-get install -y python3 python3-venv)"; exit 1; }
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { echo "installing python3-venv"; (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# system packages, installed with apt when missing: Debian's flite (speech corpus synthesis) and
# espeak-ng, and a C compiler plus Python headers (pesq builds from source)
SYSCMDS := flite:flite espeak-ng:espeak-ng cc:gcc
$(VENV)/.sys: | $(PY)
	@missing=""; for cp in $(SYSCMDS); do command -v $${cp%%:*} >/dev/null || missing="$$missing $${cp#*:}"; done; \
	$(PY) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then echo "installing$$missing with apt"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get install -y -qq $$missing || ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing)) >/dev/null \
	  || { echo "could not install$$missing (Debian/Ubuntu: apt-get install -y$$missing)"; exit 1; }; fi
	@touch $@

# one stamp per extra, so the tests never wait for the benchmark's peers
$(VENV)/.test: pyproject.toml | $(PY) $(VENV)/.sys
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "molsets==0.3.1"
	@touch $@

$(VENV)/.bench: pyproject.toml | $(PY) $(VENV)/.sys
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) -m pip install -q --no-deps "molsets==0.3.1"
	@touch $@

## main job: the solver benchmark's quick mode (table on stdout, plot and tables under benchmarks/out/)
bench: $(VENV)/.bench
	$(PY) benchmarks/solvers.py --quick

bench-full: $(VENV)/.bench
	$(PY) benchmarks/solvers.py

## the test suite (2 workers, one torch thread each)
test: $(VENV)/.test
	$(PY) -m pytest -n 2 tests

clean:
	rm -rf $(VENV) benchmarks/out
