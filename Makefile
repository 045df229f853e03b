# The two commands of the quick start: `make run` and `make test`.
# Each creates .venv when missing (or when pyproject.toml / constraints.txt changed).
# .venv is constraints.txt installed as it is, in one pip run without resolution (--no-deps):
# it pins the whole tree, torch==2.13.0+cpu (the local CPU wheel, never a multi-GB CUDA build)
# and setuptools included; .ci/check_pins.py first checks that it pins every requirement of
# pyproject.toml, `pip check` after that nothing is missing. --no-compile: a module is
# byte-compiled when first imported, not all of torch, scipy... at install (half the time).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Scanners with dependency trees of their own (checkov pins old boto3, packaging...) live in a
# separate environment so they never move the project's pins.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: run approve test test-fast setup lint api doctor lock clean system-deps tools

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) .ci/check_pins.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile --no-deps -r constraints.txt
	$(BIN)/python -m pip install --quiet --no-compile --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

## The main job on embedded defaults (SQLite, local LanceDB, a local Prefect server): the whole
## loop up to a remediation waiting for approval in the UI; Ctrl-C stops it. Options of
## `neuralops run` go in ARGS: make run ARGS="--port 4300 --workers 2". It writes the stack's
## addresses to <data dir>/stack.json, where every other `neuralops` command finds them.
run: $(STAMP)
	$(BIN)/neuralops run $(ARGS)

## Decide a remediation waiting for approval, from any terminal (the stack is found through
## <data dir>/stack.json): make approve INCIDENT=<id> TOKEN=<jwt> [APPROVER=<id>] [REJECT=1]
## [COMMENT="why"]. The token goes through the environment, not the command line.
APPROVER ?= sre-oncall@example.com
approve: $(STAMP)
	@test -n "$(INCIDENT)" && test -n "$(TOKEN)" || { \
	  echo 'usage: make approve INCIDENT=<id> TOKEN=<token> [APPROVER=<id>] [REJECT=1] [COMMENT="why"]' >&2; \
	  exit 2; }
	@NEURALOPS_APPROVAL_TOKEN='$(TOKEN)' $(BIN)/neuralops approve '$(INCIDENT)' \
	  --approver '$(APPROVER)' $(if $(REJECT),--reject) $(if $(COMMENT),--comment '$(COMMENT)')

## Real components the tests start themselves: Prometheus and promtool, and chromium for the
## browser test (Debian packages; Playwright drives this chromium and downloads no browser).
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null \
	  && command -v chromium >/dev/null || { \
	  echo "installing Debian packages prometheus and chromium (tests start them)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus chromium >/dev/null; }

$(TOOLS_STAMP): tools-constraints.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet --no-compile -r tools-constraints.txt
	touch $@

## checkov (the static scan of the connector's manifests) in its own environment.
tools: $(TOOLS_STAMP)

## What the tests need, made side by side: .venv, .venv-tools and the Debian packages.
setup:
	@$(MAKE) --no-print-directory -j3 $(STAMP) $(TOOLS_STAMP) system-deps

## The whole test suite, slow tests included, after the linter, on TEST_WORKERS processes
## (pytest-xdist; tests/conftest.py hands out the longest tests first and keeps the tests that
## share a module's connector on one process). One file by hand: .venv/bin/pytest tests/test_x.py
## (one process). Three processes on the 2 cores: the tests start servers and browsers of their
## own, so a fourth only oversubscribed the CPU (clean clone, idle machine: 926 s wall with 4,
## 843 s with 3; again with bytecode written, in place: 568 s with 4 against 586 s with 3, within
## the noise, for 840 against 773 s of user CPU and the browser test 241 against 171 s).
## The suite starts many Python processes (Prefect servers, workers, `neuralops` commands).
## Where the environment sets PYTHONDONTWRITEBYTECODE (these machines do), each one compiled
## Prefect, SQLAlchemy... from source again, as .venv is installed --no-compile. Unset for the
## suite: the first import writes the bytecode and the later ones reuse it (clean clone, one
## run each: 971 → 739 s of user CPU, pytest 684 → 570 s).
TEST_WORKERS ?= 3
PARALLEL = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
PYTEST = PYTHONDONTWRITEBYTECODE= $(BIN)/pytest
test: setup lint
	$(PYTEST) $(PARALLEL)

test-fast: $(STAMP)
	$(PYTEST) $(PARALLEL) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

api: $(STAMP)
	$(BIN)/neuralops api

doctor: $(STAMP)
	$(BIN)/neuralops doctor

## Re-pin every package after changing pyproject.toml: pip resolves what is new against the
## current pins, then the whole environment (setuptools too, pip aside) is written out.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	{ echo "# Every package in the environment, pinned; regenerate with: make lock"; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v -E '^(neuralops|pip)=='; } > constraints.txt

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache
