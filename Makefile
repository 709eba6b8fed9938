# kgc-kd developer commands. `make help` lists them.
PYTHON ?= python

.PHONY: help install test smoke fit compare bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## torch (CPU wheel) first, then the package (editable) with its dev extras
	$(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the whole test suite (CPU, offline)
	WANDB_MODE=disabled $(PYTHON) -m pytest -q

SMOKE_DIR ?= runs/smoke
SMOKE_OUT = report.md report.json report.png $(foreach s,teacher pmd6 pmd4 pmd2,stages/$(s)/export/biencoder.json)

smoke:  ## the default chain end to end with two training batches per stage (77 s on 2 CPU cores)
	rm -rf $(SMOKE_DIR)
	$(PYTHON) -m kgc_kd.fit trainer.limit_train_batches=2 run.root=$(SMOKE_DIR) run.name=default $(SMOKE_ARGS)
	@for f in $(SMOKE_OUT); do test -s $(SMOKE_DIR)/default/$$f || { echo "smoke: $(SMOKE_DIR)/default/$$f is missing"; exit 1; }; done
	@echo "smoke: every report file and stage export written under $(SMOKE_DIR)/default"

fit:  ## the embedded default run (UMLS + packaged MiniLM)
	$(PYTHON) -m kgc_kd.fit

COMPARE_ARGS ?= --objectives none,pmd,makd,pmd_makd --seeds 3 config=conf/experiment/compare_umls.yaml

compare:  ## objectives x seeds on one teacher (UMLS): runs/compare/<name>/compare.md (~1 h 30 min on 2 CPU cores)
	$(PYTHON) -m kgc_kd.compare $(COMPARE_ARGS)

bench:  ## benchmark harness: runs/bench/bench.json + bench.md (MiniLM on UMLS; ~25 min on 2 CPU cores)
	WANDB_MODE=disabled $(PYTHON) -m kgc_kd.bench $(BENCH_ARGS)

clean:  ## remove run outputs and caches
	rm -rf runs lightning_logs .pytest_cache
