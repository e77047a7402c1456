# `make demo` and `make test` each create .venv when missing, install, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_OUT ?= runs/demo

.PHONY: demo test install data browser bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The embedded default data: Debian's dataset-fashion-mnist (MIT), installed when missing.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  { echo "make: could not install dataset-fashion-mnist with apt-get; install it or set FMNIST_DIR to a folder with the Fashion-MNIST idx .gz files" >&2; exit 1; }; \
	else echo "make: Fashion-MNIST not found in $(FMNIST_DIR); run 'sudo apt-get install dataset-fashion-mnist' or set FMNIST_DIR to a folder with the idx .gz files" >&2; exit 1; fi

# Debian's Chromium and its driver, for the browser tests of the local web page; installed
# when missing (as root with apt-get), otherwise those tests are skipped with the reason.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "make: could not install chromium and chromium-driver with apt-get; the browser tests will be skipped" >&2; \
	else echo "make: chromium and chromium-driver not found; 'sudo apt-get install chromium chromium-driver' enables the browser tests" >&2; fi

demo: install data
	UNLEARNABLE_FMNIST_DIR=$(FMNIST_DIR) $(VENV)/bin/unlearnable demo --out $(DEMO_OUT) --overwrite

test: install browser
	UNLEARNABLE_FMNIST_DIR=$(FMNIST_DIR) $(PY) -m pytest

bench: install
	$(PY) bench/poison_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
