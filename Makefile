# Set-up is automatic: every target creates .venv and installs the project into it when needed.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SNAKEMAKE := $(BIN)/snakemake

.PHONY: run test check bench gpu-smoke lint report results-page clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## run: the whole pipeline on the built-in synthetic data set, then the HTML report
run: $(STAMP)
	$(SNAKEMAKE) --profile profiles/demo
	$(SNAKEMAKE) --profile profiles/demo --report results/report.html
	$(SNAKEMAKE) --profile profiles/demo --report results/report.zip
	@echo "report: results/report.html (self-contained) and results/report.zip"

## test: the test suite (unit, real-data, workflow lint/format/dry-run, tiny end-to-end runs,
## SLURM, learning checks) in TEST_WORKERS processes, each test file in one of them
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

## check: the fast tier for iteration (no Snakemake runs, kill tests, learning checks or the
## `full` ones: mypy, every real image), slowest tests listed; `make test` runs everything
check: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile \
		-m "not workflow and not kill and not learning and not full" --durations=15

## bench: speed benchmarks, each a ratio against a baseline measured in the same run
bench: $(STAMP)
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/bench_cluster.py
	$(BIN)/python bench/bench_tta.py
	$(BIN)/python bench/bench_segment.py
	$(BIN)/python bench/bench_dag.py
	$(BIN)/python bench/bench_gan.py  # last: exits 1 when a target is missed

## gpu-smoke: on a CUDA machine, the paper-size GAN and both baselines for a few dozen bf16
## iterations each, TTA prediction, speeds, peak GPU memory and projected schedule times (< 5 min;
## one line and exit 0 without CUDA)
gpu-smoke: $(STAMP)
	$(BIN)/python bench/gpu_smoke.py

## results-page: docs/results.md's section NAME (demo, cpu, paper, ...) from this checkout's
## finished run in results/ (date, commit, machine, Table 1, paired comparisons, copy quality)
NAME ?= demo
results-page: $(STAMP)
	$(BIN)/python -m nucleistyle.report.results results --name $(NAME)

## lint: ruff, mypy, snakefmt and snakemake --lint
lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/mypy
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint --configfile config.small.yaml config.demo.yaml

clean:
	rm -rf results logs benchmarks .snakemake
