# Bootstraps everything on a fresh machine: Debian packages (as root), .venv, the project.
#   make demo   speak a sentence through the whole graph into out/demo.wav
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := espeak-ng libopus0
EXTRAS ?= test

.PHONY: demo test serve bench deps venv clean

deps:
	@scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

venv: deps $(STAMP)

demo: venv
	@mkdir -p out
	$(VENV)/bin/miku say "Hi, I'm Miku! Thanks for inviting me to voice chat. Shall we sing together?" --out out/demo.wav
	@echo
	@echo "Your demo is in out/demo.wav (48 kHz stereo, exactly what Discord would get)."
	@echo "Listen with: aplay out/demo.wav   - or open it in any audio player."

test: venv
	$(PY) -m pytest -q

serve: venv
	$(VENV)/bin/miku serve

bench: venv
	$(PY) benchmarks/voice_latency.py

clean:
	rm -rf $(VENV) out .pytest_cache
