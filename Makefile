# Rankstream: `make run` starts everything with embedded servers, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench lint clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Rankstream needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/rankstream up

test: $(STAMP)
	$(BIN)/pytest

# Installs the bench extra (plotting, profilers) on top of the project, then runs the
# whole benchmark against a fresh 'rankstream up': five to six minutes on two cores.
bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .rankstream .pytest_cache
