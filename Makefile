# kgc-kd developer commands. `make help` lists them.
PYTHON ?= python

.PHONY: help install test fit bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## torch (CPU wheel) first, then the package (editable) with its dev extras
	$(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the whole test suite (CPU, offline)
	WANDB_MODE=disabled $(PYTHON) -m pytest -q

fit:  ## the embedded default run (UMLS + packaged MiniLM)
	$(PYTHON) -m kgc_kd.fit

bench:  ## benchmark harness: runs/bench/bench.json + bench.md (MiniLM on UMLS; ~25 min on 2 CPU cores)
	WANDB_MODE=disabled $(PYTHON) -m kgc_kd.bench $(BENCH_ARGS)

clean:  ## remove run outputs and caches
	rm -rf runs lightning_logs .pytest_cache
