# The two commands of the quick start: `make run` and `make test`.
# Each creates .venv when missing (or when pyproject.toml / constraints.txt changed).
# torch==2.13.0 (the local CPU wheel) is installed BEFORE anything that depends on it, or pip
# would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Scanners with dependency trees of their own (checkov pins old boto3, packaging...) live in a
# separate environment so they never move the project's pins.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: run approve test test-fast lint api doctor lock clean system-deps tools

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0  # the local CPU wheel, before its dependents
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
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
	$(TOOLS)/bin/python -m pip install --quiet -r tools-constraints.txt
	touch $@

## checkov (the static scan of the connector's manifests) in its own environment.
tools: $(TOOLS_STAMP)

## The whole test suite, slow tests included, after the linter.
test: $(STAMP) $(TOOLS_STAMP) system-deps lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

api: $(STAMP)
	$(BIN)/neuralops api

doctor: $(STAMP)
	$(BIN)/neuralops doctor

## Re-pin every package after changing pyproject.toml.
lock: $(STAMP)
	{ echo "# Every package in the environment, pinned; regenerate with: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^neuralops'; } > constraints.txt

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache
