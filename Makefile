# The two commands: `make demo` and `make test`. Both create .venv when missing and install
# jointreg into it with the torch pin in constraints.txt (an unpinned install would pull a
# multi-GB CUDA build of torch).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.jointreg-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast install clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jointreg demo

# pytest exits 5 when it collects no tests; that is not a failure of the code under test.
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "no tests were collected"; exit 0; fi; exit $$code

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
