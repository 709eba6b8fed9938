# kgc-kd developer commands. `make help` lists them.
PYTHON ?= python

.PHONY: help install test test-gpu test-torch smoke fit compare bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

install:  ## torch (CPU wheel) first, then the package (editable) with its dev and serve extras
	$(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev,serve]"

test:  ## the whole test suite (CPU, offline)
	WANDB_MODE=disabled $(PYTHON) -m pytest -q

test-gpu:  ## the CUDA test suite (tests marked gpu; skipped with a reason without a CUDA device)
	WANDB_MODE=disabled $(PYTHON) -m pytest -q -m gpu -ra

# make test-torch TORCH=2.6.0: a new virtual environment under /tmp with that torch (from PyPI: on Linux the
# CUDA build), then kgc-kd (editable, dev extras) with torch held at that version, then the fast suite.
TORCH ?= 2.13.0
TORCH_VENV ?= /tmp/venv-torch$(TORCH)

test-torch:  ## the fast suite (-m "not slow") in a new venv with another torch: make test-torch TORCH=2.6.0
	@if [ -e "$(TORCH_VENV)" ] && [ ! -f "$(TORCH_VENV)/pyvenv.cfg" ]; then echo "test-torch: $(TORCH_VENV) exists and is not a virtual environment; not touching it"; exit 1; fi
	rm -rf "$(TORCH_VENV)"
	$(PYTHON) -m venv "$(TORCH_VENV)"
	echo "torch==$(TORCH)" > "$(TORCH_VENV)/torch-pin.txt"
	"$(TORCH_VENV)/bin/python" -m pip install -q "torch==$(TORCH)"
	"$(TORCH_VENV)/bin/python" -m pip install -q -c "$(TORCH_VENV)/torch-pin.txt" -e "$(CURDIR)[dev,serve]"
	"$(TORCH_VENV)/bin/python" -c "import torch; v = torch.__version__.split('+')[0]; assert v == '$(TORCH)', v; print('test-torch: torch', torch.__version__, 'cuda build', torch.version.cuda)"
	cd "$(CURDIR)" && WANDB_MODE=disabled "$(TORCH_VENV)/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider $(TEST_ARGS)

SMOKE_DIR ?= runs/smoke
SMOKE_OUT = report.md report.json report.png $(foreach s,teacher pmd6 pmd4 pmd2,stages/$(s)/export/biencoder.json stages/$(s)/export/entity_vectors.npy)

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

# experiments/bench: not in the package; BENCH_ARGS="--rerank-data DIR" adds the rerank section (WN18RR, KG-BERT layout)
bench:  ## benchmark harness: runs/bench/bench.json + bench.md (MiniLM on UMLS; ~25 min on 2 CPU cores)
	WANDB_MODE=disabled $(PYTHON) -m experiments.bench $(BENCH_ARGS)

clean:  ## remove run outputs and caches
	rm -rf runs lightning_logs .pytest_cache
