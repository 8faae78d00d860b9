# Bootstraps everything on a fresh machine: Debian packages (as root), .venv, the project.
#   make demo   speak a sentence through the whole graph into out/demo.wav
#   make test   the test suite (installs the model-backend extras too, to test their real loading code)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# flite: a second synthetic voice for the voice-command tests; chromium: the admin panel's browser tests (tests/test_admin_panel.py, Playwright on the system browser)
DEBIAN_PACKAGES := espeak-ng flite libopus0 chromium
TEST_EXTRAS := test,bench,soprano,rvc,llamacpp,image,stt
SOPRANO_TTS := soprano-tts==0.2.0
# only its packaged ONNX VAD model is used; its own deps want a torchaudio that has no wheel for our torch
SILERO_VAD := silero-vad==6.2.3
# llama-cpp-python builds llama.cpp from source: portable CPU build, no server/examples/tests
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF

.PHONY: demo test serve bench deps venv venv-test clean

deps:
	@scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	$(PIP) install --quiet --no-deps $(SILERO_VAD)
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	@echo "Installing the project with its test and model-backend extras (a first build of llama-cpp-python takes minutes) ..."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet -e '.[$(TEST_EXTRAS)]'
	$(PIP) install --quiet --no-deps $(SOPRANO_TTS) $(SILERO_VAD)
	@touch $@ $(VENV)/.installed-base

venv: deps $(VENV)/.installed-base

venv-test: deps $(VENV)/.installed-test

demo: venv
	@mkdir -p out
	$(VENV)/bin/miku say "Hi, I'm Miku! Thanks for inviting me to voice chat. Shall we sing together?" --out out/demo.wav
	@echo
	@echo "Your demo is in out/demo.wav (48 kHz stereo, exactly what Discord would get)."
	@echo "Listen with: aplay out/demo.wav   - or open it in any audio player."

test: venv-test
	$(PY) -m pytest -q

serve: venv
	$(VENV)/bin/miku serve

bench: venv-test
	$(PY) benchmarks/voice_latency.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
