# Two entry points (see README "Quick start"):
#   make demo   set up .venv, generate the demo data, run every stage of configs/fcos_b0_demo.yaml
#   make test   set up .venv and run the test suite
# Set-up is idempotent: a stamp file records the installed state of the requirement files.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP  := $(VENV)/.fcos-installed
# tcmalloc speeds up CPU training 1.2-1.6x; `make setup` installs it where it can (see below)
# tcmalloc_minimal (no heap profiler/checker): OpenVINO's runtime aborts ("free(): invalid
# pointer") under the full libtcmalloc.so.4 but runs under the minimal one, the same allocator
TCMALLOC_PATHS := /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4
TCMALLOC_LIB := $(firstword $(wildcard $(TCMALLOC_PATHS)))
# looked up by the shell when a recipe runs (make caches directory listings), so a tcmalloc
# installed by `setup` in the same `make demo` is used
PRELOAD_TCMALLOC = lib=$$(ls $(TCMALLOC_PATHS) 2>/dev/null | head -n 1); if [ -n "$$lib" ]; then export LD_PRELOAD="$$lib$${LD_PRELOAD:+:$$LD_PRELOAD}"; fi;

.PHONY: setup demo test lint bench gpu-check docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` may resolve to a newer multi-GB build
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# cpu-kernels: ninja, to build fcos's C++ CPU training kernels (with the system's g++)
	$(PY) -m pip install --quiet -e '.[test,lint,cpu-kernels]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	# tcmalloc: CPU training 1.2-1.6x faster than with glibc malloc on the demo (17 -> 28 img/s
	# on 2 AVX2 cores, 50 -> 59 on 2 AVX-512 cores; README); installed here when this is a root
	# shell with apt-get
	# (FCOS_NO_APT=1 skips it), else a one-line note says how to install it
	@if [ -z "$(TCMALLOC_LIB)" ] && [ -z "$$FCOS_NO_APT" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing tcmalloc (Debian package libtcmalloc-minimal4)"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null 2>&1 \
	   || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 >/dev/null)) \
	   || echo "note: tcmalloc could not be installed; training runs with glibc malloc (slower)"; \
	elif [ -z "$(TCMALLOC_LIB)" ]; then \
	  echo "note: tcmalloc not found; CPU training is about 1.6x faster with it: apt-get install libtcmalloc-minimal4"; \
	fi
	touch $(STAMP)


# --overwrite: the demo is reproducible (generated data, fixed seed), so a second `make demo`
# trains it again and replaces its own checkpoints in tmp_models/fcos_b0_demo/; without the flag
# `fcos run` refuses to replace existing checkpoints (continue a stopped demo with
# `.venv/bin/fcos run configs/fcos_b0_demo.yaml --resume` instead)
demo: setup
	$(PRELOAD_TCMALLOC) OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/fcos run configs/fcos_b0_demo.yaml --stage all --overwrite

test: setup
	OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 $(PY) -m pytest -q

# the checks CI enforces (configured in pyproject.toml; .pre-commit-config.yaml runs them on
# commit): lint, formatting, types
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# the generated references (docs/config-reference.md, docs/cli-reference.md) document fcos-core
# and the first-party plugins only, whatever else is installed (tests/integration/test_docs.py)
FIRST_PARTY = $(shell awk 'FNR==1{f=0} /^name *=/ && !f {gsub(/.*= *"|".*/,""); print; f=1}' $(PLUGINS) | paste -sd, -)
docs: setup
	FCOS_LOAD_PLUGINS=$(FIRST_PARTY) $(VENV)/bin/fcos docs config
	FCOS_LOAD_PLUGINS=$(FIRST_PARTY) $(VENV)/bin/fcos docs cli

bench: setup
	for b in benchmarks/bench_*.py; do OMP_WAIT_POLICY=PASSIVE $(PY) $$b --quick || exit 1; done

# the prepared GPU check (benchmarks/gpu_check.py, docs/gpu.md): CUDA vs CPU agreement,
# throughput, peak memory, quantized models bit for bit, DDP on nccl; one table, ~5 min on one GPU
gpu-check: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/gpu_check.py --device cuda --json runs/gpu_check.json

clean:
	rm -rf $(VENV) runs tmp_models tmp_data
