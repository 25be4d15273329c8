# `make run` and `make test` set up .venv on first use; nothing else needs installing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast bench sample-audio clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so pip reuses the CPU wheel and never resolves a CUDA build for it.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,sweep]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) app.py

# The browser test drives Debian's Chromium (Playwright from PyPI, no browser download).
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[base,small]'  # the bigger-model rows
	$(PY) -m bench.run_all

sample-audio: $(STAMP)
	$(PY) -m pip install --quiet -e '.[tts]'
	$(PY) scripts/make_sample_audio.py

clean:
	rm -rf $(VENV) .pytest_cache
