# edgecompress: `make demo` runs the pipeline on Fashion-MNIST, `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export OMP_NUM_THREADS ?= 2

.PHONY: install data browser qemu services postgres demo test test-slow lint bench bench-gpu clean

install: $(STAMP)

# python3 -m venv needs Debian's python3-venv (ensurepip), which a bare Debian Python lacks
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(ENSURE) "python3 -m venv" python3-venv "make install" $(PY) -c 'import ensurepip, venv'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Every tool or service a test needs goes through tools/ensure.sh: found, else the Debian package where apt is
# usable, else (CI=true) one line naming it and a failed make, or (locally) a note that its tests will skip.
ENSURE := $(SHELL) tools/ensure.sh
export PG_LIB ?= /usr/lib/postgresql

# Fashion-MNIST: Debian package where apt is usable, else torchvision's download into the data root
# ($$EDGECOMPRESS_DATA or ~/.local/share/edgecompress: read only for the loaders; caches live elsewhere).
HAVE_FMNIST = $(BIN)/python -c 'from edgecompress.evaluators.data import fmnist_folder as f; exit(f() is None)'
data: install
	@CI= $(ENSURE) Fashion-MNIST dataset-fashion-mnist "the tests on real data" $(HAVE_FMNIST) >/dev/null; \
	if $(HAVE_FMNIST); then echo "Fashion-MNIST: found"; \
	elif $(BIN)/edgecompress download fashion_mnist; then :; \
	elif [ "$(CI)" = true ]; then echo "CI=true: Fashion-MNIST is missing (no Debian package, download failed)" >&2; \
	  exit 1; \
	else echo "Fashion-MNIST is missing: the tests on real data will skip"; fi

# Headless Chromium for the report-rendering tests.
browser:
	@$(ENSURE) Chromium chromium "the report-rendering tests" sh -c 'command -v chromium'

# qemu-user for the test that runs ONNX Runtime's int8 kernels on an emulated AVX2 CPU without VNNI.
qemu:
	@$(ENSURE) qemu-user qemu-user "the emulated-AVX2 test" sh -c 'command -v qemu-x86_64'

# PostgreSQL for the shared-study tests; `make postgres` starts a loopback server in runs/postgres for users and
# prints its --storage URL.
services:
	@$(ENSURE) PostgreSQL postgresql "the PostgreSQL tests" \
	  sh -c 'command -v pg_ctl || ls $(PG_LIB)/*/bin/pg_ctl'

postgres: install services
	$(BIN)/python -m edgecompress.pgserver start --dir runs/postgres --port 5433

demo: data
	$(BIN)/edgecompress demo configs/fmnist-quick.yaml

test: data browser qemu services
	$(BIN)/python -m pytest -q

# exit code 5 = no test selected: not a failure when no test is marked slow
test-slow: data browser qemu services
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

# ruff, then the layer contracts (pyproject.toml [tool.importlinter]): a lower layer importing a higher one fails
lint: install
	$(BIN)/ruff check edgecompress tests bench examples
	$(BIN)/lint-imports --no-cache

bench: data
	$(BIN)/python bench/base.py
	$(BIN)/python bench/evaluator.py --study demo
	$(BIN)/python bench/int8_schemes.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/cascade.py --build
	$(BIN)/python bench/cascade.py --build --heavy
	$(BIN)/python bench/latency.py

bench-gpu: data
	$(BIN)/python bench/evaluator.py --device cuda --out bench/results/evaluator-gpu.json

clean:
	rm -rf runs .pytest_cache
