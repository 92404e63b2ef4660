# Two entry points (see README "Quick start"):
#   make demo   set up .venv, generate the demo data, run every stage of configs/fcos_b0_demo.yaml
#   make test   set up .venv and run the test suite
# Set-up is idempotent: a stamp file records the installed state of the requirement files.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP  := $(VENV)/.fcos-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` may resolve to a newer multi-GB build
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

# tcmalloc speeds up CPU training 1.1-1.6x; used when installed (Debian: libgoogle-perftools4)
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc.so.4 /usr/lib64/libtcmalloc.so.4))

# --overwrite: the demo is reproducible (generated data, fixed seed), so a second `make demo`
# trains it again and replaces its own checkpoints in tmp_models/fcos_b0_demo/; without the flag
# `fcos run` refuses to replace existing checkpoints (continue a stopped demo with
# `.venv/bin/fcos run configs/fcos_b0_demo.yaml --resume` instead)
demo: setup
	OMP_WAIT_POLICY=PASSIVE $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) $(VENV)/bin/fcos run configs/fcos_b0_demo.yaml --stage all --overwrite

test: setup
	OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 $(PY) -m pytest -q

bench: setup
	for b in benchmarks/bench_*.py; do OMP_WAIT_POLICY=PASSIVE $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs tmp_models tmp_data
