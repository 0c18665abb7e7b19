# The README's two commands:
#   make run    set up .venv/ and execute every notebook headlessly (default profile)
#   make test   set up .venv/ and run the unit tests and nbval over the notebooks (smoke profile)
#   make test-fast  the unit tests only: no notebooks, nothing marked slow (under 2 minutes on 2 cores)
#   make gpu-rehearse / make gpu-pack   the prepared GPU run, rehearsed on this CPU / packed for a GPU machine
#   make book   the notebook site (Sphinx, myst-nb, sphinx-book-theme) in build/book (nothing is executed)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast book setup clean gpu-rehearse gpu-pack

run: $(STAMP)
	$(BIN)/python -m vitsurvey run

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" -q

book: $(STAMP)
	$(BIN)/python -m vitsurvey book

setup: $(STAMP)

# the GPU run: rehearsed on this CPU at tiny sizes; packed for a GPU machine without a network (README, GPU run)
gpu-rehearse: $(STAMP)
	$(BIN)/python -m vitsurvey gpu-run --rehearse

gpu-pack: $(STAMP)
	$(BIN)/python -m vitsurvey gpu-pack build/gpu-pack

# constraints.txt pins the tested set (torch 2.13.0 CPU build here; on a GPU machine the same pin
# installs that platform's build). The check below fails set-up if CUDA packages arrived anyway on a
# machine without a GPU, which happens when something pulls a newer torch.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@if ! command -v nvidia-smi >/dev/null 2>&1 && $(BIN)/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
		echo "error: CUDA packages (nvidia-*) were installed on a machine without a GPU; check that constraints.txt pins torch."; \
		exit 1; fi
	$(BIN)/python -m pip check
	touch $@

clean:
	rm -rf $(VENV)
