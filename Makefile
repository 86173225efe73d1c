# The venv is always .venv/ at the repo root. `make demo` and `make test` set it up on first use.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup demo test bench-deps bench-engine bench bench-quick clean

setup: $(STAMP) $(FMNIST)

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's real Fashion-MNIST (70k images, IDX files); installed only when missing.
$(FMNIST):
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: setup
	OMP_WAIT_POLICY=PASSIVE $(VPY) -m secateur.demo
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/secateur compress demo-latency --out runs/demo --force

test: setup
	$(VPY) -m pytest -n 2 --dist loadgroup --durations=15

bench-deps: setup
	$(VPY) -m pip install --quiet -e '.[bench]'

bench-engine: bench-deps
	$(VPY) benchmarks/engine.py

# Every benchmark at its full budget (many hours on 2 CPU cores; each step resumes from
# benchmarks/.cache/ when rerun): baselines first, shared by the rest.
bench: bench-deps
	$(VPY) benchmarks/training.py --baselines
	$(VPY) benchmarks/datadriven.py
	$(VPY) benchmarks/product.py
	$(VPY) benchmarks/training.py
	$(VPY) benchmarks/engine.py

bench-quick: bench-deps
	$(VPY) benchmarks/training.py --quick
	$(VPY) benchmarks/datadriven.py --quick
	$(VPY) benchmarks/product.py --quick
	$(VPY) benchmarks/engine.py --quick

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
