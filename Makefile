# edgecompress: `make demo` runs the pipeline on Fashion-MNIST, `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export OMP_NUM_THREADS ?= 2

.PHONY: install data browser qemu services postgres demo test test-slow lint bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST: Debian package where apt is usable, else torchvision's download into ~/.cache/edgecompress.
data: install
	@if [ -f $(FMNIST_DEB) ]; then echo "Fashion-MNIST: $(dir $(FMNIST_DEB))"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; then \
	     echo "Fashion-MNIST installed from the Debian package"; \
	else $(BIN)/edgecompress download fashion_mnist; fi

# Headless Chromium for the report-rendering tests (Debian package; tests skip with a reason without it).
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	     (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	     && echo "chromium installed" || echo "chromium not installable here: report-rendering tests will skip"; \
	else echo "no chromium: report-rendering tests will skip"; fi

# qemu-user (Debian) for the test that runs ONNX Runtime's int8 kernels on an emulated AVX2 CPU without VNNI.
qemu:
	@if command -v qemu-x86_64 >/dev/null 2>&1; then echo "qemu-user: $$(command -v qemu-x86_64)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	     (apt-get update -qq && apt-get install -y -qq qemu-user) >/dev/null 2>&1 \
	     && echo "qemu-user installed" || echo "qemu-user not installable here: the emulated-AVX2 test will skip"; \
	else echo "no qemu-user: the emulated-AVX2 test will skip"; fi

# PostgreSQL (Debian) for the shared-study tests (tests skip with a reason without it); `make postgres` starts
# a loopback server in runs/postgres for users and prints its --storage URL.
services:
	@if command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	     echo "postgresql: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	     (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null 2>&1 \
	     && echo "postgresql installed" || echo "postgresql not installable here: the PostgreSQL tests will skip"; \
	else echo "no postgresql: the PostgreSQL tests will skip"; fi

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
	$(BIN)/ruff check edgecompress tests bench
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
